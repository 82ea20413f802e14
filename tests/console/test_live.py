"""The console follows the server: a page changes when another client
changes what it shows, with no reload, and says so when it has lost its
stream and may show older data. Against the real binary, stopped and
started again on the same ports and data.

Run by scripts/test-console (`./scripts/test-console test_live`).
"""

import unittest

from selenium.webdriver.common.by import By

from test_console import BrowserCase


class Live(BrowserCase):
    """One server, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.start("live", [("alice", "*:admin")])

    def mark_document(self):
        """A mark that a reload would lose."""
        self.browser.execute_script("window.__sameDocument = true")

    def assert_same_document(self):
        self.assertTrue(self.browser.execute_script("return window.__sameDocument === true"), "the page reloaded")

    def test_01_the_rail_follows_an_activation_made_elsewhere(self):
        base = "namespaces/payments/policies/limits"
        for amount in (1, 2):
            self.api("POST", f"{base}/drafts", {"body": {"maxAmount": amount}})
            self.api("POST", f"{base}:publish", {"label": f"1.0.{amount}"})
        self.api("POST", "policies:activate", {"targets": [{"namespace": "payments", "name": "limits", "version": 1}]})
        self.sign_in("alice")
        self.open(f"#/{base}")
        self.assertEqual(self.rail(), {2: "published", 1: "active"})
        self.mark_document()
        # Another client (the CLI) activates version 2.
        self.cli("activate", "payments/limits@2", "--reason", "elsewhere", token=self.tokens["alice"])
        self.wait_for(lambda: self.rail() == {2: "active", 1: "published"}, "the rail to follow", timeout=10)
        self.assert_same_document()
        self.assertEqual(self.browser.find_elements(By.ID, "stale"), [])
        self.assert_clean_console()

    def test_02_the_event_log_follows(self):
        self.sign_in("alice")
        self.open("#/namespaces/payments/events")
        shown = len(self.browser.find_elements(By.CSS_SELECTOR, "tr[data-event]"))
        self.mark_document()
        self.api("POST", "namespaces/payments/policies/limits/drafts", {"body": {"maxAmount": 3}, "changeNotes": "x"})
        self.wait_for(
            lambda: len(self.browser.find_elements(By.CSS_SELECTOR, "tr[data-event]")) == shown + 1,
            "the new event on top", timeout=10)
        self.assertIn("draft created", self.find("tr[data-event]").text)
        self.assert_same_document()
        self.assert_clean_console()

    def test_03_a_lost_stream_is_told_and_the_page_catches_up(self):
        self.sign_in("alice")
        self.open("#/namespaces/payments/policies/limits")
        self.mark_document()
        self.server.kill()
        self.server.wait()
        self.wait_text("#stale", "Not live", timeout=15)
        self.assertIn("may show older data", self.find("#stale").text)
        self.screenshot("stale")
        self.assert_accessible("a page that lost its stream")
        self.serve()
        # A change made while the page was away reaches it once it is back.
        self.cli("activate", "payments/limits@1", "--reason", "back", token=self.tokens["alice"])
        self.wait_for(lambda: not self.browser.find_elements(By.ID, "stale"), "the notice to go", timeout=20)
        self.wait_for(lambda: self.rail().get(1) == "active", "the rail to catch up", timeout=10)
        self.assert_same_document()
        # The broken stream's failed requests are the only errors logged.
        errors = [e["message"] for e in self.browser.get_log("browser") if e["level"] == "SEVERE"]
        self.assertTrue(all("active:watch" in error or "ERR_CONNECTION_REFUSED" in error for error in errors), errors)


if __name__ == "__main__":
    unittest.main(verbosity=2)
