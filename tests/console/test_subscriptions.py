"""Webhook subscriptions in the console, against the real binary and a
receiver listening on this machine: an operator creates one and sees its
secret this once, sends a test and sees the delivery listed with its status,
sees an activation delivered, disables and enables it, and deletes it after
a confirmation; a reader is offered none of it.

Run by scripts/test-console (`./scripts/test-console test_subscriptions`).
"""

import http.server
import threading
import unittest

from selenium.webdriver.common.by import By

from test_console import BrowserCase


class Receiver(http.server.BaseHTTPRequestHandler):
    """Answers every POST 200 and keeps its headers and body."""

    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Subscriptions(BrowserCase):
    """One server, one receiver, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=cls.receiver.serve_forever, daemon=True).start()
        cls.endpoint = f"http://127.0.0.1:{cls.receiver.server_address[1]}/hook"
        cls.start(
            "subscriptions", [("alice", "*:admin"), ("rita", "payments:reader")],
            config='[notifications]\nallow_http = true\nallow_private_addresses = true\n'
                   'poll_interval = "100ms"\ninitial_retry_delay = "100ms"\n',
        )

    @classmethod
    def tearDownClass(cls):
        cls.receiver.shutdown()
        cls.receiver.server_close()
        super().tearDownClass()

    def test_01_create_see_the_secret_once_and_test(self):
        self.sign_in("alice")
        self.open("#/namespaces/payments/subscriptions")
        self.assertIn("No subscription yet.", self.find("#subscriptions").text)
        self.assertIn("Deployment-wide subscriptions", self.find("main").text)
        self.find("#subscription-name").send_keys("approvers")
        self.find("#subscription-url").send_keys(self.endpoint)
        self.find("#kind-EVENT_KIND_ACTIVATED").click()
        self.find("#kind-EVENT_KIND_ROLLOUT_SCHEDULED").click()
        self.find("#new-subscription button[type=submit]").click()

        # The secret, this once, with a way to copy it; the listing has it.
        secret = self.find("#subscription-secret").get_attribute("value")
        self.assertTrue(secret.startswith("whsec_"), secret)
        self.assertEqual(self.browser.switch_to.active_element.get_attribute("id"), "subscription-secret")
        self.find("#copy-secret").click()
        self.wait_for(lambda: self.find("#secret-copied").text, "the copy to be told")
        self.wait_text("#subscriptions tr[data-subscription='approvers']", "enabled")
        self.assertIn("activated, rollout scheduled", self.find("#subscriptions tr[data-subscription='approvers']").text)
        self.screenshot("subscription-created")
        self.assert_accessible("subscriptions, a secret shown")

        # Never again: neither the listing nor the subscription's page shows it.
        self.browser.refresh()
        self.wait_main()
        self.find("#subscriptions tr[data-subscription='approvers']")
        self.assertFalse(self.browser.find_elements(By.ID, "subscription-secret"))
        self.find("#subscriptions a").click()
        self.wait_main()
        self.assertNotIn(secret, self.browser.page_source)

        # A test message reaches the receiver, and is listed with its status.
        self.find("#send-test").click()
        self.wait_text("#test-result", "Test delivered: HTTP 200")
        self.assertTrue(any(headers.get("webhook-signature", "").startswith("v1,") for headers, _ in Receiver.received))
        self.wait_text("#deliveries tr[data-event='0']", "delivered")
        self.assertIn("200", self.find("#deliveries tr[data-event='0']").text)
        self.screenshot("subscription")
        self.assert_accessible("a subscription and its deliveries")
        self.assert_clean_console()

    def test_02_an_event_delivered_then_disable_enable_and_delete(self):
        base = "namespaces/payments/policies/limits"
        self.api("POST", f"{base}/drafts", {"body": {"maxAmount": 1}})
        self.api("POST", f"{base}:publish", {"label": "1.0.0", "activate": True})
        self.wait_for(lambda: any(b"ACTIVATED" in body for _, body in Receiver.received), "the activation delivered")
        self.open("#/namespaces/payments/subscriptions/approvers")
        # The page reads its deliveries again every few seconds.
        self.wait_text("#deliveries tr[data-event]:not([data-event='0'])", "delivered", timeout=15)
        self.assertIn("200", self.find("#deliveries tr[data-event]:not([data-event='0'])").text)

        summary = self.act("Disable…")
        self.assertIn("nothing is delivered to it", summary)
        self.wait_text("#subscription-state", "disabled")
        self.act("Enable…")
        self.wait_text("#subscription-state", "enabled")

        # A change of the kinds, with the keyboard alone.
        self.find("#kind-EVENT_KIND_ROLLOUT_SCHEDULED").send_keys(" ")
        self.find("#edit-subscription button[type=submit]").click()
        # Read at once: the page redraws itself after the save.
        self.wait_for(lambda: self.browser.execute_script(
            "return document.getElementById('subscription-kinds')?.textContent") == "activated", "the kinds saved and shown")
        self.wait_main()
        self.assertEqual(self.api("GET", "namespaces/payments/subscriptions/approvers")["eventKinds"], ["EVENT_KIND_ACTIVATED"])

        summary = self.act("Delete…")
        self.assertIn("cannot be undone", summary)
        self.wait_text("#subscriptions", "No subscription yet.")
        self.assertEqual(self.api("GET", "namespaces/payments/subscriptions").get("subscriptions", []), [])
        self.assert_clean_console()

    def test_03_deployment_wide_for_an_admin(self):
        self.open("#/namespaces/payments/subscriptions")
        self.find("main a[href='#/subscriptions']").click()
        self.wait_main()
        self.assertEqual(self.find("main h1").text, "Deployment-wide subscriptions")
        self.find("#subscription-name").send_keys("audit")
        self.find("#subscription-url").send_keys(self.endpoint)
        self.find("#kind-EVENT_KIND_KEY_ROTATED").click()
        self.find("#format-SUBSCRIPTION_FORMAT_CHAT").click()
        self.find("#new-subscription button[type=submit]").click()
        self.assertTrue(self.find("#subscription-secret").get_attribute("value").startswith("whsec_"))
        self.wait_text("#subscriptions tr[data-subscription='audit']", "chat")
        self.assertEqual(self.api("GET", "subscriptions/audit").get("namespace", ""), "")
        self.assert_accessible("deployment-wide subscriptions")
        self.assert_clean_console()

    def test_04_a_reader_is_offered_nothing(self):
        self.sign_in("rita")
        self.open("#/namespaces/payments/subscriptions")
        self.assertIn("operator role", self.find("main").text)
        self.assertFalse(self.browser.find_elements(By.ID, "new-subscription"))
        self.assert_accessible("subscriptions, for a reader")
        self.open("#/subscriptions")
        self.assertIn("*:admin grant", self.find("main").text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
