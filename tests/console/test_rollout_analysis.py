"""A rollout's analyses on its page, against the real binary and a real
Prometheus (Debian's `prometheus`, which scripts/test-console installs) with
nothing to scrape, asked constant queries and one that rises and falls: the
page lists the analyses; draws each analysis's measurements over the steps it
was measured in as a chart, each value against the bound of its condition
and each outcome marked (a phase the console does not know as a neutral
mark), with every measurement the server returns in a table beneath it; in
each step of the timeline says what each analysis measured there; an
inconclusive measurement says it has no value and why; a failing analysis
that rolled its rollout back shows the failed value.

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

    def test_01_each_analysis_drawn_against_its_bound_over_its_steps(self):
        self.release_two("limits")
        # latency rises by 0.05 a second from 0 to 0.3 and starts again: the
        # seconds 4, 5 and 6 of each 7 fail `result < 0.2`.
        rollout = self.api("POST", "namespaces/payments/rollouts", {
            "targets": [{"name": "limits", "label": "1.0.2"}],
            "steps": [
                {"percentage": 50, "bake": "8s",
                 "analyses": [analysis("saturation", "sum(up)", "result < 0.8", inconclusiveLimit=1000)]},
                {"percentage": 100, "bake": "3600s"},
            ],
            "analyses": [
                analysis("error-ratio", "vector(0.005)", "result < 0.01", failureLimit=1),
                analysis("latency", "(floor(vector(time())) % 7) * 0.05", "result < 0.2", failureLimit=1000),
            ],
            "reason": "canary",
        })["id"]
        # More than five measurements in the second step, which the old table
        # of the latest five would not have shown with those of the first.
        self.wait_for(lambda: len(self.measurements(rollout, "error-ratio", step=1)) >= 4, "measurements in step 2",
                      timeout=60)

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

        charts = self.charts()
        self.assertEqual(list(charts), ["error-ratio", "latency", "saturation"])

        # error-ratio, over both steps: every measurement the server returned
        # is a mark and a row, each below the bound, passed.
        chart = charts["error-ratio"]
        total = len(self.measurements(rollout, "error-ratio")) + len(self.measurements(rollout, "error-ratio", step=1))
        shown = len(chart["marks"])
        self.assertGreaterEqual(shown, 10)
        self.assertLessEqual(shown, total, "more marks than measurements")
        self.assertEqual(len(chart["rows"]), shown, "a row per mark")
        self.assertEqual(chart["summary"], f"{shown} measurements ({shown} passed)")
        self.assertRegex(chart["label"],
                         rf"^error-ratio: {shown} measurements in steps 1 and 2, judged by result < 0\.01: {shown} passed; "
                         r"every value 0\.005; the last, at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ: 0\.005, passed\.$")
        self.assertEqual(chart["bounds"][0][0], "0.01")
        bound = chart["bounds"][0][1]
        self.assertEqual({(phase, kind) for phase, kind, _, _ in chart["marks"]}, {("passed", "circle")})
        self.assertTrue(all(y > bound for _, _, y, _ in chart["marks"]), "a value under the bound drawn above it")
        self.assertEqual(chart["steps"], ["step 1 · 50%", "step 2 · 100%"])
        self.assertEqual(chart["edges"], 1, "one edge between the two steps")
        self.assertEqual({step for _, _, _, step in chart["marks"]}, {"1", "2"})
        for phase, cells, _ in chart["rows"]:
            self.assertEqual(phase, "passed")
            self.assertIn(cells[0], ("1", "2"))
            self.assertRegex(cells[1], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")
            self.assertEqual(cells[2:], ["0.005", "result < 0.01", "passed"])
        taken = [when for _, _, when in chart["rows"]]
        self.assertEqual(taken, sorted(taken, reverse=True), "newest first")
        self.assertEqual(chart["legend"], ["passed", "bound of result < 0.01", "fails there"])

        # latency crosses its bound: the failed marks above it, the passed
        # ones below, each with its value.
        chart = charts["latency"]
        phases = {phase for phase, _, _, _ in chart["marks"]}
        self.assertEqual(phases, {"passed", "failed"})
        bound = chart["bounds"][0][1]
        for phase, kind, y, _ in chart["marks"]:
            if phase == "failed":
                self.assertEqual(kind, "path", "a failed measurement is a diamond")
                self.assertLessEqual(y, bound + 0.5, "a failed value drawn under the bound")
            else:
                self.assertGreater(y, bound, "a passed value drawn over the bound")
        self.assertEqual(chart["legend"], ["passed", "failed", "bound of result < 0.2", "fails there"])
        self.assertRegex(chart["label"], r"^latency: \d+ measurements in steps 1 and 2, judged by result < 0\.2: \d+ passed, \d+ failed; values from [\d.]+ to [\d.]+;")

        # saturation asks for series there are none of: each measurement on
        # the "no value" row, inconclusive, and the table says why.
        chart = charts["saturation"]
        self.assertEqual({(phase, kind) for phase, kind, _, _ in chart["marks"]}, {("inconclusive", "circle")})
        self.assertEqual(len({y for _, _, y, _ in chart["marks"]}), 1, "all on the no-value row")
        self.assertGreater(chart["marks"][0][2], chart["bounds"][0][1])
        self.assertEqual({step for _, _, _, step in chart["marks"]}, {"1"}, "measured in step 1 alone")
        phase, cells, _ = chart["rows"][0]
        self.assertEqual(phase, "inconclusive")
        self.assertEqual(cells[2:], ["no value: the query answered no series", "result < 0.8", "inconclusive"])
        self.assertRegex(chart["label"], r"^saturation: \d+ measurements in step 1, judged by result < 0\.8: \d+ inconclusive; no value measured;")

        # The timeline says what each analysis measured in each step.
        lines = self.step_lines()
        self.assertEqual(sorted(lines), [(1, "error-ratio"), (1, "latency"), (1, "saturation"), (2, "error-ratio"), (2, "latency")])
        self.assertRegex(lines[2, "error-ratio"],
                         r"^error-ratio in step 2: \d+ measurements \(\d+ passed\); the last, \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ: 0\.005 passed$")
        self.assertRegex(lines[1, "saturation"],
                         r"^saturation in step 1: \d+ measurements \(\d+ inconclusive\); the last, .*Z: no value: the query answered no series inconclusive$")

        # The table stays open while the page follows the measurements.
        count = len(self.charts()["error-ratio"]["marks"])
        self.click("details.measurement-table[data-analysis='error-ratio'] summary")
        self.wait_for(lambda: len(self.charts()["error-ratio"]["marks"]) > count
                      and self.find("details.measurement-table[data-analysis='error-ratio']").get_property("open"),
                      "a newer measurement on the page, the table still open", timeout=10)
        self.assert_accessible("the rollout's analyses, a table open")
        self.click("details.measurement-table[data-analysis='error-ratio'] summary")
        self.wait_for(lambda: not self.find("details.measurement-table[data-analysis='error-ratio']").get_property("open"),
                      "the table closed")
        self.browser.execute_script("document.getElementById('rollout-measurements').scrollIntoView()")
        self.screenshot("rollout-analysis")
        self.assert_clean_console()
        self.api("POST", f"namespaces/payments/rollouts/{rollout}:abort", {"reason": "enough"})

    def test_02_a_phase_the_console_does_not_know_is_a_neutral_mark(self):
        """The server may add a phase (an error: Prometheus did not answer):
        drawn as a neutral mark, named by its value, counted and listed."""
        rollout = self.api("GET", "namespaces/payments/rollouts")["rollouts"][0]["id"]
        # The page's reads of the rollout (test_01's) are answered with its
        # newest error-ratio measurement made an error, as such a server
        # would send it.
        self.open("#/namespaces/payments/rollouts")
        self.browser.execute_script("""
            const id = arguments[0];
            const fetched = window.fetch;
            window.fetch = async function (input, init) {
              const response = await fetched.call(this, input, init);
              const url = new URL(input instanceof Request ? input.url : String(input), location.href);
              if (!url.pathname.endsWith(`/rollouts/${id}`)) return response;
              const rollout = await response.json();
              const measurement = rollout.measurements.findLast((each) => each.analysis === 'error-ratio');
              measurement.phase = 'MEASUREMENT_PHASE_ERROR';
              delete measurement.value;
              measurement.message = 'Prometheus did not answer in 2s';
              const headers = new Headers(response.headers);
              headers.delete('content-length');
              return new Response(JSON.stringify(rollout), { status: response.status, headers });
            };""", rollout)
        self.click(f"#rollouts a[href$='/rollouts/{rollout}']")
        self.wait_main()
        self.wait_text("#rollout-state", "aborted")
        self.wait_for(lambda: any(phase == "error" for phase, _, _, _ in self.charts()["error-ratio"]["marks"]),
                      "the error drawn")
        chart = self.charts()["error-ratio"]
        errors = [(kind, y) for phase, kind, y, _ in chart["marks"] if phase == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0][0], "rect", "an unknown phase is a neutral square")
        self.assertGreater(errors[0][1], chart["bounds"][0][1], "with no value, on the no-value row")
        self.assertEqual(chart["neutral"], ["error"], "drawn in the neutral colour")
        self.assertEqual(chart["legend"], ["passed", "error", "bound of result < 0.01", "fails there"])
        self.assertRegex(chart["summary"], r"^\d+ measurements \(\d+ passed, 1 error\)$")
        self.assertRegex(chart["label"], r": \d+ passed, 1 error; every value 0\.005; the last, at .*Z: no value, error\.$")
        phase, cells, _ = chart["rows"][0]
        self.assertEqual(phase, "error")
        self.assertEqual(cells[2:], ["no value: Prometheus did not answer in 2s", "result < 0.01", "error"])
        self.assert_accessible("a measurement of a phase the console does not know")
        self.assert_clean_console()

    def test_03_a_failed_measurement_that_rolled_the_rollout_back(self):
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
        chart = self.charts()["error-ratio"]
        self.assertEqual(chart["summary"], "1 measurement (1 failed)")
        self.assertRegex(chart["label"], r"^error-ratio: 1 measurement in step 1, judged by result < 0\.01: 1 failed; "
                                         r"one value, 0\.5; the last, at .*Z: 0\.5, failed\.$")
        [(phase, kind, y, _)] = chart["marks"]
        self.assertEqual((phase, kind), ("failed", "path"))
        self.assertLess(y, chart["bounds"][0][1], "0.5 drawn under the bound of 0.01")
        phase, cells, _ = chart["rows"][0]
        self.assertEqual(phase, "failed")
        self.assertEqual(cells[2:], ["0.5", "result < 0.01", "failed"])
        self.assertRegex(self.step_lines()[1, "error-ratio"], r"^error-ratio in step 1: 1 measurement \(1 failed\); the last, .*Z: 0\.5 failed$")
        self.assert_accessible("a rollout its analysis rolled back")
        self.assert_clean_console()

    def charts(self):
        """Each analysis's chart and table, read at once (the page redraws as
        measurements come): {analysis: {summary, label, marks: [(phase,
        shape, centre's y, step)], bounds: [(value, y)], steps, edges,
        legend, neutral: [phase], rows: [(phase, cells, taken)]}}."""
        sections = self.browser.execute_script("""
            return [...document.querySelectorAll('#rollout-measurements section.analysis')].map((section) => {
              const chart = section.querySelector('svg.chart');
              const centre = (element) => { const box = element.getBBox(); return box.y + box.height / 2; };
              return [section.dataset.analysis, {
                summary: section.querySelector('.measurements-summary').textContent,
                label: chart.getAttribute('aria-label'),
                role: chart.getAttribute('role'),
                marks: [...chart.querySelectorAll('.mark')].map((mark) => [mark.dataset.phase, mark.tagName, centre(mark), mark.dataset.step]),
                neutral: [...chart.querySelectorAll('.mark')].filter((mark) => getComputedStyle(mark).fill === 'rgb(87, 96, 106)').map((mark) => mark.dataset.phase),
                bounds: [...chart.querySelectorAll('line.bound')].map((line) => [line.dataset.bound, Number(line.getAttribute('y1'))]),
                steps: [...chart.querySelectorAll('.step-name')].map((text) => text.textContent),
                edges: chart.querySelectorAll('.step-edge').length,
                legend: [...section.querySelectorAll('.chart-legend li')].map((item) => item.textContent.trim()),
                rows: [...section.querySelectorAll('details tbody tr')].map((row) => [
                  row.dataset.phase, [...row.cells].map((cell) => cell.textContent.trim()),
                  row.querySelector('time').getAttribute('datetime')]),
              }];
            })""")
        for name, chart in sections:
            self.assertEqual(chart.pop("role"), "img", f"{name}'s chart is an image to assistive technology")
        return dict(sections)

    def step_lines(self):
        """What the timeline says each analysis measured in each step:
        {(step, analysis): text}."""
        lines = self.browser.execute_script("""
            return [...document.querySelectorAll('#rollout-timeline .step-measurements')].map((line) => [
              Number(line.dataset.step), line.dataset.analysis, line.textContent.replace(/\\s+/g, ' ').trim()])""")
        return {(step, name): text for step, name, text in lines}


if __name__ == "__main__":
    unittest.main(verbosity=2)
