"""A policy held by a rollout, and the rollout page as a timeline, against
the real binary with two `policyhub agent` runtimes: the policy says which
rollout holds it and links it, offers no action the server would refuse and
says why; the rollout shows its steps, the bake's countdown, the runtimes on
the candidate with their outcome, links to its policies; the policy lists its
past rollouts. A completed rollout's page follows its cohort's reports until
none is pending; a rollout's page polls once at a time, a control's refresh
included, and not at all once it is left.

Run by scripts/test-console (`./scripts/test-console test_rollout_views`).
"""

import json
import re
import time
import unittest
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from test_console import BrowserCase, free_port


class RolloutViews(BrowserCase):
    """One server, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.start("rollout-views", [("alice", "*:admin"), ("agents", "payments:reader")],
                  config='[rollouts]\ntick_interval = "200ms"\n')

    def test_01_a_held_policy_and_its_rollout(self):
        base = "namespaces/payments/policies/limits"
        for amount in (1, 2):
            self.api("POST", f"{base}/drafts", {"body": {"maxAmount": amount}})
            self.api("POST", f"{base}:publish", {"label": f"1.0.{amount}", "activate": amount == 1})
        token_file = self.dir / "agents.token"
        token_file.write_text(self.tokens["agents"])
        for index in range(2):
            self.spawn(
                "agent", "--server", f"http://{self.grpc}", "--namespace", "payments",
                "--runtime-id", f"edge-{index}", "--label", f"zone={'ab'[index]}",
                "--token-file", str(token_file), "--listen", f"127.0.0.1:{free_port()}",
                "--cache-dir", str(self.dir / f"agent-{index}"),
            )
        self.wait_for(lambda: self.api("GET", f"{base}/status").get("applied", 0) == 2, "2 runtimes on v1")
        started = json.loads(self.cli(
            "rollout", "start", "payments/limits@2", "--step", "100:1h",
            "--reason", "slowly", "-o", "json", token=self.tokens["alice"],
        ))
        rollout = started["id"]

        # The policy says who holds it, and offers no refused action.
        self.sign_in("alice")
        self.open(f"#/{base}?version=2")
        held = self.find("#held")
        self.assertIn(f"rollout {rollout[:8]}", held.text)
        self.assertIn("moves it from v1 to v2", held.text)
        buttons = [b.text for b in self.browser.find_elements(By.CSS_SELECTOR, "#actions button")]
        self.assertEqual(buttons, [])
        self.assertIn("Activate and roll back are not offered", self.find("#refused").text)
        self.assertIn(rollout[:8], self.find("main section[aria-labelledby='policy-rollouts']").text)
        self.screenshot("policy-held")
        self.assert_accessible("a policy held by a rollout")

        # Its rollout: a timeline, the countdown, the runtimes on the candidate.
        held.find_element(By.TAG_NAME, "a").click()
        self.wait_text("#rollout-state", "running")
        step = self.find("#rollout-timeline li")
        self.assertEqual(step.get_attribute("data-status"), "baking")
        self.assertIn("Step 1: 100% of runtimes, bake 1 h 00 min 00 s", step.text)
        first = self.countdown()
        self.assertTrue(3590 < first <= 3600, first)
        time.sleep(2.2)
        self.assertLess(self.countdown(), first, "the countdown does not move")
        self.wait_for(lambda: len(self.browser.find_elements(By.CSS_SELECTOR, "#cohort tr[data-runtime]")) == 2,
                      "the two runtimes on the candidate")
        self.wait_text("#cohort tr[data-runtime='edge-0']", "limits v2: applied")
        self.assertIn("zone=a", self.find("#cohort tr[data-runtime='edge-0']").text)
        link = self.find("#rollout-targets a")
        self.assertTrue(link.get_attribute("href").endswith(f"#/{base}?version=2"))
        self.screenshot("rollout-timeline")
        self.assert_accessible("the rollout's timeline")

        # The fleet's runtimes, filtered by the server with a label selector.
        self.open(f"#/{base}/fleet?labels=zone%3Da")
        self.assertEqual(self.find("#runtime-labels").get_attribute("value"), "zone=a")
        self.wait_for(lambda: [e.get_attribute("data-runtime") for e in
                               self.browser.find_elements(By.CSS_SELECTOR, "#runtimes tr[data-runtime]")] == ["edge-0"],
                      "edge-0 alone")
        self.assertEqual(self.find("#runtimes-page").text, "Page 1: runtimes 1–1.")
        self.assertTrue(self.find("#runtimes-next").get_property("disabled"))
        self.assert_accessible("the fleet, filtered")

        # Once it is aborted, the policy is free again, and its past rollout listed.
        self.api("POST", f"namespaces/payments/rollouts/{rollout}:abort", {"reason": "enough"})
        self.open(f"#/{base}?version=2")
        self.wait_for(lambda: not self.browser.find_elements(By.ID, "held"), "the hold to go")
        self.assertIn("Activate…", [b.text for b in self.browser.find_elements(By.CSS_SELECTOR, "#actions button")])
        self.assertIn("aborted", self.find("main section[aria-labelledby='policy-rollouts'] tbody").text)
        self.assert_clean_console()

    def test_02_a_completed_rollout_follows_its_cohort_until_none_is_pending(self):
        # Three runtimes of their own namespace, which report when the test
        # says: the rollout completes with two of them still pending.
        base = "namespaces/stores/policies/quota"
        for amount in (1, 2):
            self.api("POST", f"{base}/drafts", {"body": {"maxItems": amount}})
            self.api("POST", f"{base}:publish", {"label": f"1.0.{amount}", "activate": amount == 1})
        for runtime in ("shop-a", "shop-b", "shop-c"):
            self.identify("stores", "quota", runtime)
        rollout, path, revision = self.start_rollout("1.0.2")
        self.report("stores", "shop-a", "quota", 2, revision)

        self.sign_in("alice")
        self.open(f"#/{path}")
        self.wait_text("#rollout-progress", "1 applied · 0 rejected · 2 pending of 3")
        self.count_reads(rollout)
        self.api("POST", f"{path}:promote", {"reason": "enough"})
        self.wait_text("#rollout-state", "completed")
        self.assertIn("1 applied · 0 rejected · 2 pending of 3", self.find("#rollout-progress").text)

        # Completed: the page follows the runtimes as they report.
        self.report("stores", "shop-b", "quota", 2, revision)
        self.wait_text("#rollout-progress", "2 applied · 0 rejected · 1 pending of 3")
        self.report("stores", "shop-c", "quota", 2, revision)
        self.wait_text("#rollout-progress", "3 applied · 0 rejected · 0 pending of 3")
        self.wait_for(lambda: len(self.browser.find_elements(By.CSS_SELECTOR, "#cohort tr[data-runtime]")) == 3,
                      "the three runtimes on the candidate")

        # None is pending: the page stops asking.
        settled = len(self.reads())
        time.sleep(2.5)
        self.assertEqual(len(self.reads()), settled, "the page still asks with none pending")
        self.assert_accessible("a completed rollout")
        self.assert_clean_console()

    def test_03_one_poll_at_a_time_and_none_once_the_page_is_left(self):
        base = "namespaces/stores/policies/quota"
        self.api("POST", f"{base}/drafts", {"body": {"maxItems": 3}})
        self.api("POST", f"{base}:publish", {"label": "1.0.3"})
        rollout, path, _ = self.start_rollout("1.0.3")
        self.sign_in("alice")
        self.open(f"#/{path}")
        self.wait_text("#rollout-state", "running")
        self.count_reads(rollout)

        # A control refreshes the page without starting a second poll: after
        # a pause and a resume it still asks about once a second.
        for verb in ("pause", "resume"):
            self.click(f"#rollout-{verb}")
            dialog = self.find("dialog[open]")
            dialog.find_element(By.NAME, "reason").send_keys("a look")
            dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            WebDriverWait(self.browser, 10).until_not(lambda browser: browser.find_elements(By.CSS_SELECTOR, "dialog[open]"))
        self.wait_text("#rollout-state", "running")
        before = len(self.reads())
        time.sleep(4)
        self.assertLessEqual(len(self.reads()) - before, 6, "reads in 4 s: more than one poll at a time")

        # Left while it moves: no read of the rollout once another page shows.
        self.click("#rollout-targets a")
        self.wait_main()
        self.assertIn("/policies/quota", self.browser.current_url)
        time.sleep(2.5)
        self.assertEqual([read for read in self.reads() if read["hash"] != f"#/{path}"], [],
                         "the rollout was read after its page was left")
        self.api("POST", f"{path}:abort", {"reason": "enough"})
        self.assert_clean_console()

    def start_rollout(self, label):
        """A rollout of quota's `label` to all of the stores, baking for an
        hour, once it runs: its id, its path and its step's revision."""
        rollout = self.api("POST", "namespaces/stores/rollouts", {
            "targets": [{"name": "quota", "label": label}],
            "steps": [{"percentage": 100, "bake": "3600s"}],
            "reason": "all stores",
        })["id"]
        path = f"namespaces/stores/rollouts/{rollout}"
        self.wait_for(lambda: self.api("GET", path)["state"] == "ROLLOUT_STATE_RUNNING"
                      and self.api("GET", path).get("progress", {}).get("cohort") == 3, "a running rollout of three")
        return rollout, path, self.api("GET", path)["stepRevisions"][0]

    def identify(self, namespace, policy, runtime):
        """A runtime identified by a watch naming it; it stays in the fleet
        (disconnected) once the watch ends."""
        request = urllib.request.Request(
            f"{self.base}/v1/namespaces/{namespace}/active:watch?names={policy}&runtime.id={runtime}",
            headers={"Authorization": f"Bearer {self.tokens['alice']}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.readline()

    def report(self, namespace, runtime, policy, version, revision):
        """`runtime` applied `version` of `policy`."""
        self.api("POST", f"namespaces/{namespace}/runtimes/{runtime}:reportStatus", {
            "revision": revision,
            "policies": [{"name": policy, "version": version, "state": "APPLY_STATE_APPLIED"}],
        })

    def count_reads(self, rollout):
        """From now on the page keeps each read of the rollout it makes
        (GetRollout), with the route shown when it was made."""
        self.browser.execute_script("""
            const id = arguments[0];
            window.rolloutReads = [];
            const fetched = window.fetch;
            window.fetch = function (input, init) {
              const url = new URL(input instanceof Request ? input.url : String(input), location.href);
              if (url.pathname.endsWith(`/rollouts/${id}`)) window.rolloutReads.push({ hash: location.hash });
              return fetched.call(this, input, init);
            };""", rollout)

    def reads(self):
        return self.browser.execute_script("return window.rolloutReads")

    def countdown(self):
        """Seconds left in the bake, as the page tells them."""
        text = self.find("#bake-countdown").text
        match = re.search(r"Bakes (?:(\d+) h )?(?:(\d+) min )?(\d+) s more", text)
        self.assertIsNotNone(match, text)
        hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds


if __name__ == "__main__":
    unittest.main(verbosity=2)
