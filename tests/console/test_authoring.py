"""Writing policies in the console, end to end against the real binary: a
draft through the form made from the policy's JSON Schema (a bound
violated, shown at its field, fixed, published and activated), through the
JSON editor (a syntax error located), a new draft from an old version,
the schema page, and the whole way by keyboard alone.

Run by scripts/test-console (`./scripts/test-console test_authoring`).
"""

import unittest

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from test_console import BrowserCase

BUDGET_SCHEMA = {
    "type": "object",
    "required": ["tokenBudget", "usdBudget"],
    "properties": {
        "tokenBudget": {"type": "integer", "title": "Token Budget", "minimum": 1, "maximum": 100000,
                        "description": "Tokens one session may spend."},
        "usdBudget": {"type": "number", "title": "USD Budget", "minimum": 0, "maximum": 1000},
        "allowNetwork": {"type": "boolean", "title": "Allow Network",
                         "description": "Whether tools may reach the network."},
        "tier": {"title": "Tier", "enum": ["free", "pro", "enterprise"]},
        "limits": {"type": "object", "title": "Limits", "properties": {
            "perMinute": {"type": "integer", "title": "Per minute", "minimum": 1},
        }},
        "hosts": {"type": "array", "title": "Hosts", "items": {"type": "string", "title": "Host"}},
    },
}


class Authoring(BrowserCase):
    """One server, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.start("authoring", [("alice", "*:admin"), ("rita", "payments:reader")])

    # -- helpers ------------------------------------------------------------

    def field(self, label):
        """The input of the field whose label starts with `label`."""
        element = WebDriverWait(self.browser, 10).until(
            lambda browser: browser.find_element(
                By.XPATH, f"//main//label[starts-with(normalize-space(.), '{label}')]"))
        return self.browser.find_element(By.ID, element.get_attribute("for"))

    def click(self, selector):
        WebDriverWait(self.browser, 10).until(
            lambda browser: browser.find_element(By.CSS_SELECTOR, selector).is_displayed())
        self.browser.find_element(By.CSS_SELECTOR, selector).click()

    def confirm(self, fields=None):
        dialog = self.find("dialog[open]")
        for name, value in (fields or {}).items():
            dialog.find_element(By.NAME, name).send_keys(value)
        dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(self.browser, 10).until_not(
            lambda browser: browser.find_elements(By.CSS_SELECTOR, "dialog[open]"))

    def review_and_save(self):
        self.click("#draft-review-button")
        self.wait_text("#review-title", "")
        self.click("#draft-save")
        self.wait_text("#outcome-title", "saved")

    def expect_refused(self, *refusals):
        """The browser's console logged the refusal of each `(path, status)`
        (expected ones), and nothing else."""
        errors = [entry["message"] for entry in self.browser.get_log("browser")
                  if entry["level"] == "SEVERE" and "/favicon.ico" not in entry["message"]]

        def refused(error, path, status):
            return path in error and f"status of {status}" in error

        for path, status in refusals:
            self.assertTrue(any(refused(error, path, status) for error in errors), f"no refusal of {path} logged: {errors}")
        self.assertTrue(all(any(refused(error, *refusal) for refusal in refusals) for error in errors), errors)

    def wait_rail(self, expected):
        self.wait_for(lambda: self.rail() == expected, f"the rail {expected}", timeout=10)

    def versions(self, name):
        return {v["version"]: v for v in self.api("GET", f"namespaces/payments/policies/{name}/versions")["versions"]}

    # -- the steps ----------------------------------------------------------

    def test_01_a_draft_through_the_schema_form(self):
        self.api("PUT", "namespaces/payments/policies/budget/schema", {"schema": BUDGET_SCHEMA, "reason": "shape"})
        self.sign_in("alice")
        self.open("#/namespaces/payments/policies/budget/draft")
        self.wait_text("#draft-start", "The first version of budget")
        self.assertEqual(self.find("#mode-form").get_attribute("aria-pressed"), "true")
        # The schema's words: titles, bounds, required, descriptions as help.
        tokens = self.field("Token Budget")
        self.assertEqual(tokens.get_attribute("type"), "number")
        self.assertEqual((tokens.get_attribute("min"), tokens.get_attribute("max")), ("1", "100000"))
        label = self.browser.find_element(By.CSS_SELECTOR, f"label[for='{tokens.get_attribute('id')}']").text
        self.assertEqual(label, "Token Budget (required, 1 to 100000)")
        help_id = tokens.get_attribute("aria-describedby").split()[0]
        self.assertEqual(self.find(f"#{help_id}").text, "Tokens one session may spend.")
        self.assertEqual(
            [o.text for o in Select(self.field("Tier")).options], ["(not set)", "free", "pro", "enterprise"])

        tokens.send_keys("500000")  # above the maximum: the server will say so
        self.field("USD Budget").send_keys("10")
        self.field("Allow Network").click()
        Select(self.field("Tier")).select_by_visible_text("pro")
        self.field("Per minute").send_keys("60")
        for host in ("api.example.com", "<b>cdn</b>"):
            self.click("fieldset .add-item")
            self.browser.switch_to.active_element.send_keys(host)
        self.find("#draft-notes").send_keys("first budget")
        # The same body in the JSON editor, and back: nothing lost.
        self.click("#mode-json")
        self.assertIn('"tokenBudget": 500000', self.find("#draft-json").get_attribute("value"))
        self.click("#mode-form")
        self.assertEqual(self.field("Token Budget").get_attribute("value"), "500000")
        self.assertEqual(self.field("Host item 2").get_attribute("value"), "<b>cdn</b>")
        self.click("#draft-review-button")
        self.wait_text("#draft-review", "Nothing active")
        added = " ".join(e.text for e in self.browser.find_elements(By.CSS_SELECTOR, ".side-1 .added"))
        self.assertIn('"tokenBudget": 500000', added)
        self.click("#draft-save")
        self.wait_text("#outcome-title", "Draft version 1 saved")
        self.click("#draft-publish")
        self.confirm({"label": "1.0.0", "reason": "first"})

        # Refused by the schema: the message at the field, focus on it.
        self.wait_text("#draft-errors", "was not published")
        self.expect_refused(("/budget:publish", 400))
        tokens = self.field("Token Budget")
        self.assertEqual(tokens.get_attribute("aria-invalid"), "true")
        error = self.find(f"#{tokens.get_attribute('id')}-error")
        self.assertIn("500000 is greater than the maximum of 100000", error.text)
        self.assertEqual(self.browser.switch_to.active_element, tokens)
        self.screenshot("draft-form")
        self.assert_accessible("draft form with a violation")

        tokens.clear()
        tokens.send_keys("5000")
        self.review_and_save()
        self.wait_text("#draft-outcome", "superseding draft 1")
        self.click("#draft-publish")
        self.confirm({"label": "1.0.0", "reason": "first"})
        self.wait_text("#outcome-title", "Version 2 published")
        self.click("#draft-activate")
        self.confirm({"reason": "go live"})
        self.wait_rail({2: "active", 1: "superseded"})
        active = self.versions("budget")[2]
        self.assertEqual(active["body"], {
            "tokenBudget": 5000, "usdBudget": 10, "allowNetwork": True, "tier": "pro",
            "limits": {"perMinute": 60}, "hosts": ["api.example.com", "<b>cdn</b>"],
        })
        self.assertEqual(active["changeNotes"], "first budget")
        self.assert_clean_console()

    def test_02_the_json_editor_points_at_a_syntax_error(self):
        self.sign_in("alice")
        self.open("#/namespaces/payments/policies/flags/draft")
        self.assertEqual(self.browser.find_elements(By.ID, "mode-form"), [])
        area = self.find("#draft-json")
        area.clear()
        area.send_keys('{\n"beta": true,\n"ratio": }')
        self.wait_text("#draft-json-status", "Line 3, column 10: expected a value")
        self.assertEqual(area.get_attribute("aria-invalid"), "true")
        self.screenshot("draft-json")
        self.assert_accessible("draft JSON editor")
        # Saving is refused before anything is sent.
        self.click("#draft-review-button")
        self.wait_text("#draft-errors", "line 3, column 10")
        self.find("#draft-json-status button").click()
        self.assertEqual(self.browser.switch_to.active_element, area)
        self.assertEqual(self.browser.execute_script("return arguments[0].selectionStart", area), 25)
        area.send_keys(Keys.END, Keys.BACKSPACE, "0.5}")
        self.wait_text("#draft-json-status", "Valid JSON")
        self.find("#requirement-add").click()
        self.browser.switch_to.active_element.send_keys("budget")
        self.field("Range").send_keys("nonsense")
        self.click("#draft-review-button")
        self.click("#draft-save")
        # The server's refusal of a requirement, at its input.
        self.wait_text("#draft-errors", "was not saved")
        # GetPolicy answered NOT_FOUND for the policy yet to be created;
        # the server refused the requirement.
        self.expect_refused(("/policies/flags -", 404), ("/flags/drafts", 400))
        range_input = self.field("Range")
        self.assertEqual(range_input.get_attribute("aria-invalid"), "true")
        self.assertIn("is not a semver range", self.find(f"#{range_input.get_attribute('id')}-error").text)
        range_input.clear()
        range_input.send_keys(">=1.0.0, <2")
        self.review_and_save()
        saved = self.versions("flags")[1]
        self.assertEqual(saved["body"], {"beta": True, "ratio": 0.5})
        self.assertEqual(saved["requirements"], [{"name": "budget", "range": ">=1.0.0, <2"}])
        self.assert_clean_console()

    def test_03_a_new_draft_from_an_old_version(self):
        base = "namespaces/payments/policies/limits"
        for amount in (100, 200):
            self.api("POST", f"{base}/drafts", {"body": {"maxAmount": amount}})
            self.api("POST", f"{base}:publish", {"label": f"1.0.{amount}", "activate": True})
        self.sign_in("alice")
        self.open(f"#/{base}?version=1")
        self.click("#draft-from")
        self.wait_text("#draft-start", "Starting from version 1 (1.0.100)")
        self.assertIn('"maxAmount": 100', self.find("#draft-json").get_attribute("value"))
        self.find("#draft-notes").send_keys("back to 100")
        self.click("#draft-review-button")
        self.wait_text("#review-title", "Changes against the active version 2")
        self.assertIn('"maxAmount": 200', self.find(".side-0 .removed").text)
        self.assertIn('"maxAmount": 100', self.find(".side-1 .added").text)
        self.assert_accessible("draft review")
        self.click("#draft-save")
        self.wait_text("#outcome-title", "Draft version 3 saved")
        self.assertEqual(self.versions("limits")[3]["body"], {"maxAmount": 100})
        self.assert_clean_console()

    def test_04_the_schema_page(self):
        self.sign_in("alice")
        self.open("#/namespaces/payments/policies/limits/schema")
        self.wait_text("#schema", "no schema")
        area = self.find("#schema-json")
        area.clear()
        area.send_keys('{"type": "object", "properties": {"maxAmount": {"type": "integer", "maximum": 150}}}')
        self.find("#schema-reason").send_keys("cap")
        # The dry run first: v2 (active, 200) breaks it, v1 (100) does not.
        self.click("#schema-check")
        self.wait_text("#schema-rejections", "This schema would reject 1 version")
        self.assertEqual([e.get_attribute("data-version") for e in
                          self.browser.find_elements(By.CSS_SELECTOR, "#schema-rejections li[data-version]")], ["2"])
        self.assertIn("/maxAmount: 200 is greater than the maximum of 150", self.find("#schema-rejections").text)
        listed = self.api("GET", "namespaces/payments/policies?pageSize=500")["policies"]
        self.assertNotIn("schema", next(p for p in listed if p["name"] == "limits"), "a dry run changed the schema")
        self.assert_accessible("schema dry run")
        self.click("#schema-save")
        self.wait_text("#schema-outcome", "The active version violates it")
        self.assertIn("200 is greater than the maximum of 150", self.find("#schema-outcome").text)
        self.assertIn('"maximum": 150', self.find("pre#schema").text)
        self.assert_accessible("schema")
        # A reader sees the schema, and neither the editor nor a draft link.
        self.sign_in("rita")
        self.open("#/namespaces/payments/policies/limits/schema")
        self.find("pre#schema")
        self.assertEqual(self.browser.find_elements(By.ID, "schema-json"), [])
        self.open("#/namespaces/payments/policies/limits")
        self.assertEqual(self.browser.find_elements(By.ID, "draft-from"), [])
        self.assert_clean_console()

    def test_05_keyboard_only_authoring(self):
        """From the namespace's page to an active version without the mouse:
        each control reached by Tab, each button pressed by Enter or Space."""
        self.api("PUT", "namespaces/payments/policies/quota/schema", {"schema": {
            "type": "object", "required": ["perDay"],
            "properties": {"perDay": {"type": "integer", "title": "Per day", "minimum": 1},
                           "strict": {"type": "boolean", "title": "Strict"}},
        }})
        self.sign_in("alice")
        self.open("#/namespaces/payments/policies/quota/draft")
        self.browser.execute_script("document.getElementById('main').focus()")
        self.tab_to(lambda e: e.get_attribute("id") == self.field("Per day").get_attribute("id")).send_keys("7")
        self.tab_to(lambda e: e.get_attribute("type") == "checkbox").send_keys(Keys.SPACE)
        self.tab_to(lambda e: e.get_attribute("id") == "draft-notes").send_keys("by keyboard")
        self.tab_to(lambda e: e.get_attribute("id") == "draft-review-button").send_keys(Keys.ENTER)
        self.assertEqual(self.browser.switch_to.active_element.get_attribute("id"), "review-title")
        self.tab_to(lambda e: e.get_attribute("id") == "draft-save").send_keys(Keys.ENTER)
        self.wait_text("#outcome-title", "Draft version 1 saved")
        self.assertEqual(self.browser.switch_to.active_element.get_attribute("id"), "outcome-title")
        self.tab_to(lambda e: e.get_attribute("id") == "draft-publish").send_keys(Keys.ENTER)
        self.find("dialog[open]")
        self.browser.switch_to.active_element.send_keys("1.0.0", Keys.ENTER)  # the label; Enter confirms
        self.wait_text("#outcome-title", "Version 1 published")
        self.tab_to(lambda e: e.get_attribute("id") == "draft-activate").send_keys(Keys.ENTER)
        self.find("dialog[open]")
        self.browser.switch_to.active_element.send_keys("keyboard", Keys.ENTER)
        self.wait_rail({1: "active"})
        self.assertEqual(self.versions("quota")[1]["body"], {"perDay": 7, "strict": True})
        self.assert_clean_console()

    def tab_to(self, wanted, limit=40):
        """Presses Tab until the focused element is `wanted`; returns it."""
        for _ in range(limit):
            self.browser.switch_to.active_element.send_keys(Keys.TAB)
            active = self.browser.switch_to.active_element
            if wanted(active):
                return active
        raise AssertionError(f"Tab never reached the wanted control in {limit} presses")


if __name__ == "__main__":
    unittest.main(verbosity=2)
