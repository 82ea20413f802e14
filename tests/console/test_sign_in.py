"""The console's sign-in through a real OpenID provider (oidc-provider, run
by tests/oidc/provider.mjs): the authorization code flow with PKCE from the
browser, through the provider's own login and consent pages, against the
real server trusting that provider, with role bindings on its `groups`
claim. Its ID tokens live 20 seconds, so the console must refresh them by
itself.

Run by scripts/test-console, which installs what it needs.
"""

import base64
import json
import os
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from test_console import BINARY, ROOT, BrowserCase, chromium, free_port

PROVIDER_MODULE = Path(os.environ.get(
    "POLICYHUB_OIDC_PROVIDER_MODULE", ROOT / "target/tools/oidc/node_modules/oidc-provider"
))
ID_TOKEN_TTL = 20
POLICY = "#/namespaces/payments/policies/limits?version=1"


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class SignIn(BrowserCase):
    """One provider, one server, one browser; the steps run in order."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="policyhub-sign-in-"))
        cls.processes = []
        cls.grpc = f"127.0.0.1:{free_port()}"
        cls.http = f"127.0.0.1:{free_port()}"
        cls.base = f"http://{cls.http}"
        provider = subprocess.Popen(
            ["node", str(ROOT / "tests/oidc/provider.mjs")],
            env={
                **os.environ,
                "OIDC_PROVIDER_MODULE": str(PROVIDER_MODULE),
                "OIDC_ID_TOKEN_TTL": str(ID_TOKEN_TTL),
                # The console's address is its redirect URI.
                "OIDC_REDIRECT_URIS": f"{cls.base}/console/",
            },
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        cls.processes.append(provider)
        cls.issuer = provider.stdout.readline().strip()
        assert cls.issuer.startswith("http://127.0.0.1:"), f"the provider printed {cls.issuer!r}"
        secret = cls.dir / "secret"
        secret.write_text(os.urandom(32).hex())
        bindings = cls.dir / "bindings.toml"
        bindings.write_text("".join(
            f'[[bindings]]\nname = "{group}"\nissuer = "{cls.issuer}"\n'
            f'claim = "groups"\nvalue = "{group}"\ngrants = ["{grant}"]\n\n'
            for group, grant in [("payments-readers", "payments:reader"),
                                 ("payments-operators", "payments:operator")]
        ))
        config = cls.dir / "policyhub.toml"
        # No leeway: a token is refused as soon as it expires.
        config.write_text(
            f'[auth]\nhs256_secret_file = "{secret}"\nleeway = "0s"\nbindings_file = "{bindings}"\n'
            f'[[auth.issuers]]\nissuer = "{cls.issuer}"\naudiences = ["policyhub"]\n'
            'client_id = "policyhub"\nscopes = ["openid", "profile", "groups", "offline_access"]\n'
        )
        cls.spawn(
            "serve", "--config", str(config), "--data-dir", str(cls.dir / "data"),
            "--listen", cls.grpc, "--http-listen", cls.http,
        )
        cls.wait_for(lambda: cls.status("/console/") == 200, "the HTTP port")
        admin = subprocess.run(
            [str(BINARY), "token", "--secret-file", str(secret), "--subject", "admin", "--role", "*:admin"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        cls.tokens = {"admin": admin}
        # Version 1 published, not active: an operator may activate it.
        base = "namespaces/payments/policies/limits"
        cls.call("POST", f"{base}/drafts", admin, {"body": {"maxAmount": 500}})
        cls.call("POST", f"{base}:publish", admin, {"label": "1.0.0"})
        cls.browser = chromium(cls.dir / "browser")

    @classmethod
    def call(cls, method, path, token, body=None):
        request = urllib.request.Request(
            f"{cls.base}/v1/{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"{}")

    def stored(self, key):
        return self.browser.execute_script("return sessionStorage.getItem(arguments[0])", key)

    def provider_button(self):
        button = self.find(".signin button[data-issuer]")
        self.assertEqual(button.text, f"Sign in with {self.issuer.removeprefix('http://')}")
        return button

    def through_the_provider(self, who):
        """Signs in as `who` on the provider's login page and allows on its
        consent page, until the browser is back in the console."""
        WebDriverWait(self.browser, 10).until(lambda browser: browser.current_url.startswith(self.issuer))
        self.find("input[name=login]").send_keys(who)
        self.find("input[name=password]").send_keys(f"{who}-password")
        self.find("input[name=password]").submit()
        self.allow()
        WebDriverWait(self.browser, 10).until(lambda browser: browser.current_url.startswith(self.base))
        self.wait_text("#who", who)

    def allow(self):
        """Allows on the provider's consent page, once it is shown."""
        WebDriverWait(self.browser, 10, ignored_exceptions=[StaleElementReferenceException]).until(
            expected_conditions.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Allow']"))
        ).click()

    def assert_signed_in_at(self, route):
        """Back at `route`, signed in with an ID token of the provider, kept
        in no cookie; returns the token."""
        self.assertEqual(self.browser.current_url, f"{self.base}/console/{route}")
        token = self.stored("policyhub.token")
        self.assertEqual(claims(token)["iss"], self.issuer)
        self.assertIsNone(self.stored("policyhub.signin"), "the sign-in's verifier is gone")
        self.assertTrue(all(token not in cookie["value"] for cookie in self.browser.get_cookies()))
        return token

    def action_texts(self):
        """The policy page's actions, read at once (a render may replace
        them meanwhile)."""
        return self.browser.execute_script(
            "return [...document.querySelectorAll('#actions button')].map((button) => button.textContent)"
        )

    def test_01_bob_signs_in_through_the_provider_and_may_activate(self):
        self.open(POLICY)
        self.provider_button()
        self.find("#token")  # pasting a token stays possible
        self.screenshot("sign-in")
        self.assert_accessible("sign-in")
        self.provider_button().click()
        self.through_the_provider("bob")
        self.assert_signed_in_at(POLICY)
        WebDriverWait(self.browser, 10).until(lambda _: "Activate…" in self.action_texts())
        self.assertIn("payments:operator", self.call("GET", "whoami", self.stored("policyhub.token"))["grants"])
        self.assert_clean_console()

    def test_02_alice_after_sign_out_sees_no_action(self):
        self.find("#who button").click()
        self.provider_button().click()
        # After "Sign out" the provider asks who signs in again.
        self.through_the_provider("alice")
        self.assert_signed_in_at(POLICY)
        self.find("#no-actions")
        self.assertEqual(self.action_texts(), [])
        self.assert_clean_console()

    def test_03_a_tampered_state_is_refused(self):
        self.find("#who button").click()
        self.provider_button().click()
        WebDriverWait(self.browser, 10).until(lambda browser: browser.current_url.startswith(self.issuer))
        self.browser.get(f"{self.base}/console/?code=forged&state=tampered")
        self.wait_text(".signin .error", "its state does not match")
        self.assertNotIn("code=", self.browser.current_url)
        self.assertIsNone(self.stored("policyhub.token"))
        self.assertIsNone(self.stored("policyhub.signin"))
        self.assert_clean_console()

    def test_04_the_id_token_is_refreshed_before_it_expires(self):
        self.open(POLICY)
        self.provider_button().click()
        self.through_the_provider("bob")
        first = self.assert_signed_in_at(POLICY)
        self.assertIsNotNone(json.loads(self.stored("policyhub.oidc"))["refreshToken"])
        # Past the first token's expiry, with no sign-in meanwhile.
        time.sleep(max(0, claims(first)["exp"] - time.time() + 2))
        with self.assertRaises(urllib.error.HTTPError) as refused:
            self.call("GET", "whoami", first)
        self.assertEqual(refused.exception.code, 401)
        self.browser.execute_script("location.hash = '#/namespaces/payments/policies/limits'")
        WebDriverWait(self.browser, 10).until(lambda _: "Activate…" in self.action_texts())
        current = self.stored("policyhub.token")
        self.assertNotEqual(current, first)
        self.assertGreater(claims(current)["exp"], time.time())
        self.assertEqual(self.browser.find_elements(By.CSS_SELECTOR, "#banner *"), [])
        self.assertTrue(self.browser.current_url.startswith(self.base))
        self.assert_clean_console()

    def test_05_a_refused_token_keeps_the_page_and_signing_in_again_returns_to_it(self):
        self.open(POLICY)
        self.wait_text("#who", "bob")
        # Just after a renewal, so that none replaces the forged token below.
        renewed = self.stored("policyhub.token")
        WebDriverWait(self.browser, ID_TOKEN_TTL).until(lambda _: self.stored("policyhub.token") != renewed)
        button = WebDriverWait(self.browser, 10).until(lambda browser: next(
            (button for button in browser.find_elements(By.CSS_SELECTOR, "#actions button")
             if button.text == "Activate…"),
            False,
        ))
        button.click()
        dialog = self.find("dialog[open]")
        dialog.find_element(By.NAME, "reason").send_keys("typed before the refusal")
        # A token the server refuses, which the console has no reason to
        # refresh (it expires in 2286).
        forged = "e30." + base64.urlsafe_b64encode(b'{"exp":9999999999}').decode().rstrip("=") + ".x"
        self.browser.execute_script("sessionStorage.setItem('policyhub.token', arguments[0])", forged)
        dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.wait_text("#banner", "no longer accepts your sign-in")
        # What was typed is still on screen.
        dialog = self.find("dialog[open]")
        self.assertEqual(dialog.find_element(By.NAME, "reason").get_attribute("value"), "typed before the refusal")
        self.screenshot("sign-in-again")
        self.assert_accessible("signed-out banner")
        next(button for button in dialog.find_elements(By.TAG_NAME, "button") if button.text == "Cancel").click()
        self.find("#banner button").click()
        # The provider still knows bob: only its consent page is shown.
        WebDriverWait(self.browser, 10).until(lambda browser: browser.current_url.startswith(self.issuer))
        self.allow()
        self.wait_text("#who", "bob")
        self.assert_signed_in_at(POLICY)
        WebDriverWait(self.browser, 10).until(lambda _: "Activate…" in self.action_texts())
        errors = [entry for entry in self.browser.get_log("browser") if entry["level"] == "SEVERE"]
        self.assertTrue(all("401" in entry["message"] or "/favicon.ico" in entry["message"]
                            for entry in errors), errors)

    def test_06_with_no_refresh_token_the_expiry_asks_to_sign_in_again_and_keeps_the_page(self):
        self.open(POLICY)
        self.wait_text("#who", "bob")
        WebDriverWait(self.browser, 10).until(lambda _: "Activate…" in self.action_texts())
        session = json.loads(self.stored("policyhub.oidc"))
        session["refreshToken"] = None
        self.browser.execute_script(
            "sessionStorage.setItem('policyhub.oidc', arguments[0])", json.dumps(session)
        )
        self.wait_text("#banner", "has expired and could not be renewed", timeout=ID_TOKEN_TTL + 5)
        self.assertIn("Activate…", self.action_texts(), "the page stays")
        self.assertEqual(self.browser.current_url, f"{self.base}/console/{POLICY}")
        self.assertIsNone(self.stored("policyhub.token"))
        self.assert_clean_console()


if __name__ == "__main__":
    unittest.main(verbosity=2)
