"""The console at scale, against the real binary: a namespace of 1,000
policies listed in under a second cold, searched, filtered and paged; the
event log filtered by actor, several kinds and a time range; a fleet of
10,000 runtimes (each identified by a watch over SSE) paged and filtered.

Run by scripts/test-console (`./scripts/test-console test_scale`).
"""

import time
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from selenium.webdriver.common.by import By

from test_console import BrowserCase

POLICIES = 1000
RUNTIMES = 10000


class Scale(BrowserCase):
    """One server, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.start("scale", [("alice", "*:admin"), ("bob", "big:admin")],
                  config="[quotas]\nmutations_per_second = 5000.0\nmutation_burst = 5000.0\n")

    def count(self):
        return self.find("#policy-count").text

    def test_01_a_thousand_policies_listed_under_a_second_cold_searched_filtered_paged(self):
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda index: self.api(
                "POST", f"namespaces/big/policies/policy-{index:04}/drafts", {"body": {"index": index}}),
                range(POLICIES)))
        # Ten of them published and active; the others keep an open draft.
        for index in range(10):
            self.api("POST", f"namespaces/big/policies/policy-{index:04}:publish", {"activate": True})
        print(f"\nconsole: {POLICIES} policies made in {time.monotonic() - started:.1f} s")
        self.sign_in("alice")
        self.browser.get("about:blank")
        self.browser.execute_cdp_cmd("Network.clearBrowserCache", {})
        self.browser.get(f"{self.base}/console/#/namespaces/big")
        rendered = self.browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const poll = () => document.querySelectorAll('#policies tbody tr').length === 100
              ? done(performance.now()) : requestAnimationFrame(poll);
            poll();
            """
        )
        print(f"console: the namespace page drew the first 100 of {POLICIES} policies {rendered:.0f} ms "
              "after its navigation began")
        self.assertLess(rendered, 1000)
        self.assertEqual(self.count(), f"1–100 of {POLICIES} policies, page 1 of 10")
        self.screenshot("namespace-many")
        self.assert_accessible("a namespace of 1,000 policies")

        self.find("#policies-next").click()
        self.wait_text("#policy-count", "101–200 of 1000")
        self.assertIn("policy-0100", self.find("#policies tbody tr").text)
        self.find("#policy-search").send_keys("policy-09")
        self.wait_text("#policy-count", "1–100 of 100 policies (of 1000), page 1 of 1")
        self.assertTrue(self.find("#policies-next").get_property("disabled"))
        self.find("#policy-search").send_keys("99")
        self.wait_text("#policy-count", "1–1 of 1 policies")
        self.assertIn("policy-0999", self.find("#policies tbody tr").text)
        self.find("#policy-search").clear()
        self.find("#policy-search").send_keys(" ")  # an input event with no words
        self.find("#policy-show").send_keys("Nothing active")
        self.wait_text("#policy-count", "of 990 policies (of 1000)")
        self.assert_clean_console()

    def test_02_the_event_log_by_actor_kinds_and_time(self):
        base = "namespaces/big/policies/policy-0500"
        before = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
        self.api("POST", f"{base}:publish", {"reason": "bob publishes"}, token="bob")
        self.api("POST", "policies:activate", {"targets": [{"namespace": "big", "name": "policy-0500", "version": 1}],
                                               "reason": "bob activates"}, token="bob")
        self.api("POST", f"{base}/drafts", {"body": {"index": -1}, "changeNotes": "bob drafts"}, token="bob")
        self.sign_in("alice")
        since = before.strftime("%Y-%m-%dT%H:%M:%S")
        self.open("#/namespaces/big/events")
        self.find("#filter-actor").send_keys("bob")
        for kind in ("EVENT_KIND_PUBLISHED", "EVENT_KIND_ACTIVATED"):
            self.find(f"#kind-{kind}").click()
        self.browser.execute_script("arguments[0].value = arguments[1]", self.find("#filter-since"), since)
        self.browser.execute_script("performance.clearResourceTimings()")
        self.find("#filter-actor").submit()
        self.wait_for(lambda: "actor=bob" in self.browser.current_url, "the filtered address")
        self.wait_main()
        rows = [row.text for row in self.browser.find_elements(By.CSS_SELECTOR, "main tbody tr")]
        self.assertEqual(len(rows), 2, rows)
        self.assertTrue(all("bob" in row for row in rows), rows)
        self.assertEqual({("published" in row, "activated" in row) for row in rows}, {(True, False), (False, True)})
        # The server filtered: every read of the log carried the filter, and
        # one page of the thousands of events in the namespace was enough.
        reads = self.browser.execute_script(
            "return performance.getEntriesByType('resource').map((entry) => entry.name)"
            ".filter((name) => name.includes('/v1/namespaces/big/events'))")
        self.assertTrue(reads, "the log was read")
        for read in reads:
            self.assertIn("actor=bob", read)
            self.assertIn(f"since={since}.000Z".replace(":", "%3A"), read)
            self.assertIn("kinds=EVENT_KIND_PUBLISHED", read)
        older = self.browser.find_element(By.XPATH, "//main//button[text()='Older events']")
        self.assertFalse(older.is_displayed(), "no older page")
        self.assert_accessible("the event log with filters")
        # A time range that ends before bob's changes holds none of them.
        until = (before - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
        self.open(f"#/namespaces/big/events?actor=bob&until={until}")
        self.assertEqual(self.browser.find_elements(By.CSS_SELECTOR, "main tbody tr"), [])
        self.assert_clean_console()

    def test_03_a_fleet_of_ten_thousand_runtimes(self):
        def identify(index):
            """A runtime is identified by a watch naming it; it stays listed
            (disconnected) once the watch ends."""
            request = urllib.request.Request(
                f"{self.base}/v1/namespaces/big/active:watch?names=policy-0001&runtime.id=rt-{index:05}"
                f"&runtime.labels%5Bzone%5D={'ab'[index % 2]}",
                headers={"Authorization": f"Bearer {self.tokens['alice']}"})
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.readline()

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(identify, range(RUNTIMES)))
        print(f"\nconsole: {RUNTIMES} runtimes identified in {time.monotonic() - started:.1f} s")
        self.sign_in("alice")
        started = time.monotonic()
        self.open("#/namespaces/big/policies/policy-0001/fleet")
        self.wait_text("#fleet-summary", f"0 applied · 0 rejected · {RUNTIMES} pending of {RUNTIMES}")
        self.wait_for(lambda: len(self.browser.find_elements(By.CSS_SELECTOR, "#runtimes tr[data-runtime]")) == 100,
                      "the first 100 runtimes")
        drawn = time.monotonic() - started
        print(f"console: the fleet page of {RUNTIMES} runtimes drew its first page in {drawn * 1000:.0f} ms")
        self.assertLess(drawn, 3)
        self.assertEqual(self.find("#runtimes-page").text, "Page 1: runtimes 1–100, more after.")
        self.find("#runtimes-next").click()
        self.wait_text("#runtimes-page", "Page 2: runtimes 101–200")
        self.find("#runtimes-previous").click()
        self.wait_text("#runtimes-page", "Page 1: runtimes 1–100")
        self.open("#/namespaces/big/policies/policy-0001/fleet?labels=zone%3Db")
        self.wait_for(lambda: len(self.browser.find_elements(By.CSS_SELECTOR, "#runtimes tr[data-runtime]")) == 100,
                      "a page of zone=b")
        zones = self.browser.execute_script(
            "return [...document.querySelectorAll('#runtimes tr[data-runtime] td:nth-child(2)')].map((cell) => cell.textContent)")
        self.assertEqual(set(zones), {"zone=b"})
        self.assert_accessible("a fleet of 10,000 runtimes")
        self.assert_clean_console()


if __name__ == "__main__":
    unittest.main(verbosity=2)
