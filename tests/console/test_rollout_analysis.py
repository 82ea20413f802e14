"""A rollout's analyses on its page, against the real binary and a real
Prometheus (Debian's `prometheus`, which scripts/test-console installs) with
nothing to scrape, asked constant queries: the page lists the analyses, and
in each step of the timeline each measurement's value against the condition
it was judged by, its outcome in words, when it was taken, the latest few
of many with their count; an inconclusive one says it has no value and why;
a failing analysis that rolled its rollout back shows the failed value.

Run by scripts/test-console (`./scripts/test-console test_rollout_analysis`).
"""

import shutil
import subprocess
import tempfile
import unittest
import urllib.request
from pathlib import Path


from test_console import BrowserCase, free_port


def analysis(name, query, condition, **limits):
    return {"name": name, "query": query, "successCondition": condition, "interval": "1s", **limits}


class RolloutAnalysis(BrowserCase):
    """One Prometheus, one server, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.prometheus_dir = Path(tempfile.mkdtemp(prefix="policyhub-prometheus-"))
        config = cls.prometheus_dir / "prometheus.yml"
        config.write_text("global:\n  evaluation_interval: 1s\n")
        port = free_port()
        cls.prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={cls.prometheus_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        cls.wait_for(lambda: cls.ready(url), "prometheus to be ready")
        cls.start("rollout-analysis", [("alice", "*:admin")], config=(
            '[rollouts]\ntick_interval = "200ms"\nmin_analysis_interval = "1s"\nanalysis_timeout = "2s"\n'
            f'[rollouts.prometheus.default]\nurl = "{url}"\n'
        ))

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.prometheus.kill()
        cls.prometheus.wait()
        shutil.rmtree(cls.prometheus_dir, ignore_errors=True)

    @staticmethod
    def ready(url):
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def release_two(self, name):
        """`name` v1 active, v2 published."""
        base = f"namespaces/payments/policies/{name}"
        for amount in (1, 2):
            self.api("POST", f"{base}/drafts", {"body": {"maxAmount": amount}})
            self.api("POST", f"{base}:publish", {"label": f"1.0.{amount}", "activate": amount == 1})

    def measurements(self, rollout, analysis_name, step=0):
        return [m for m in self.api("GET", f"namespaces/payments/rollouts/{rollout}").get("measurements", [])
                if m["analysis"] == analysis_name and m.get("step", 0) == step]

    def test_01_passing_and_inconclusive_measurements_in_the_timeline(self):
        self.release_two("limits")
        rollout = self.api("POST", "namespaces/payments/rollouts", {
            "targets": [{"name": "limits", "label": "1.0.2"}],
            "steps": [
                {"percentage": 50, "bake": "3600s",
                 "analyses": [analysis("saturation", "sum(up)", "result < 0.8", inconclusiveLimit=1000)]},
                {"percentage": 100},
            ],
            "analyses": [analysis("error-ratio", "vector(0.005)", "result < 0.01", failureLimit=1)],
            "reason": "canary",
        })["id"]
        # More measurements than the page shows of one analysis.
        self.wait_for(lambda: len(self.measurements(rollout, "error-ratio")) >= 7, "seven measurements", timeout=40)

        self.sign_in("alice")
        self.open(f"#/namespaces/payments/rollouts/{rollout}")
        self.wait_text("#rollout-state", "running")

        # The analyses, where each is measured and how it is judged.
        listed = self.find("#rollout-analyses tr[data-analysis='error-ratio']").text
        for text in ("every step", "vector(0.005)", "result < 0.01", "1 s", "1 failed, 0 inconclusive"):
            self.assertIn(text, listed)
        listed = self.find("#rollout-analyses tr[data-analysis='saturation']").text
        for text in ("step 1", "sum(up)", "result < 0.8", "0 failed, 1000 inconclusive"):
            self.assertIn(text, listed)

        # In the baking step: the latest five of error-ratio's measurements,
        # each the value against its condition, passed, with its time.
        self.assertEqual(self.find("#rollout-timeline li").get_attribute("data-status"), "baking")
        shown = self.shown()
        self.assertEqual(sorted(shown), [(1, "error-ratio"), (1, "saturation")], "measured in step 1 alone")
        summary, rows = shown[1, "error-ratio"]
        self.assertRegex(summary, r"^error-ratio in step 1: \d+ measurements \(\d+ passed\), the latest 5 shown$")
        self.assertEqual(len(rows), 5)
        for phase, cells, _ in rows:
            self.assertEqual(phase, "passed")
            self.assertRegex(cells[0], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")
            self.assertEqual(cells[1:], ["0.005", "result < 0.01", "passed"])
        taken = [when for _, _, when in rows]
        self.assertEqual(taken, sorted(taken, reverse=True), "newest first")

        # The step's own analysis asks for series there are none of: no
        # value, and why, inconclusive.
        summary, rows = shown[1, "saturation"]
        self.assertRegex(summary, r"^saturation in step 1: \d+ measurements \(\d+ inconclusive\)")
        phase, cells, _ = rows[0]
        self.assertEqual(phase, "inconclusive")
        self.assertEqual(cells[1:], ["no value: the query answered no series", "result < 0.8", "inconclusive"])

        # The page follows the measurements as they come.
        count = self.counted(summary=shown[1, "error-ratio"][0])
        self.wait_for(lambda: self.counted(self.shown()[1, "error-ratio"][0]) > count,
                      "a newer measurement on the page", timeout=10)
        self.screenshot("rollout-analysis")
        self.assert_accessible("the rollout's analyses")
        self.assert_clean_console()
        self.api("POST", f"namespaces/payments/rollouts/{rollout}:abort", {"reason": "enough"})

    def test_02_a_failed_measurement_that_rolled_the_rollout_back(self):
        self.release_two("fees")
        rollout = self.api("POST", "namespaces/payments/rollouts", {
            "targets": [{"name": "fees", "label": "1.0.2"}],
            "steps": [{"percentage": 100, "bake": "3600s"}],
            "analyses": [analysis("error-ratio", "vector(0.5)", "result < 0.01")],
            "reason": "canary",
        })["id"]
        self.open(f"#/namespaces/payments/rollouts/{rollout}")
        self.wait_text("#rollout-state", "rolled back", timeout=20)
        self.assertIn("analysis error-ratio failed", self.find("#rollout .facts").text)
        summary, rows = self.shown()[1, "error-ratio"]
        self.assertEqual(summary, "error-ratio in step 1: 1 measurement (1 failed)")
        phase, cells, _ = rows[0]
        self.assertEqual(phase, "failed")
        self.assertEqual(cells[1:], ["0.5", "result < 0.01", "failed"])
        self.assert_accessible("a rollout its analysis rolled back")
        self.assert_clean_console()

    def shown(self):
        """The measurements in the timeline, read at once (the page redraws
        each second): {(step, analysis): (summary, [(phase, cells, taken)])}."""
        tables = self.browser.execute_script("""
            return [...document.querySelectorAll('#rollout-timeline .measurements')].map((section) => [
              Number(section.dataset.step), section.dataset.analysis,
              section.querySelector('.measurements-summary').innerText,
              [...section.querySelectorAll('tbody tr')].map((row) => [
                row.dataset.phase, [...row.cells].map((cell) => cell.innerText.trim()),
                row.querySelector('time').getAttribute('datetime')])])""")
        return {(step, name): (summary, [tuple(row) for row in rows]) for step, name, summary, rows in tables}

    @staticmethod
    def counted(summary):
        """The number of measurements a summary counts."""
        return int(summary.split(": ")[1].split(" ")[0])

if __name__ == "__main__":
    unittest.main(verbosity=2)
