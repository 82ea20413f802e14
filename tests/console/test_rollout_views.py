"""A policy held by a rollout, and the rollout page as a timeline, against
the real binary with two `policyhub agent` runtimes: the policy says which
rollout holds it and links it, offers no action the server would refuse and
says why; the rollout shows its steps, the bake's countdown, the runtimes on
the candidate with their outcome, links to its policies; the policy lists its
past rollouts.

Run by scripts/test-console (`./scripts/test-console test_rollout_views`).
"""

import json
import re
import time
import unittest

from selenium.webdriver.common.by import By

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

    def countdown(self):
        """Seconds left in the bake, as the page tells them."""
        text = self.find("#bake-countdown").text
        match = re.search(r"Bakes (?:(\d+) h )?(?:(\d+) min )?(\d+) s more", text)
        self.assertIsNotNone(match, text)
        hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds


if __name__ == "__main__":
    unittest.main(verbosity=2)
