//! A real OpenID provider for the tests (oidc-provider, run by
//! `tests/oidc/provider.mjs` under Node), and a person's browser over HTTP
//! that signs in through its pages.
//!
//! `./scripts/test` installs oidc-provider into `target/tools/oidc`;
//! `POLICYHUB_OIDC_PROVIDER_MODULE` names another copy of the package.

use std::{
    collections::HashMap,
    io::BufRead,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
};

use reqwest::{StatusCode, Url, header};

use crate::helpers::Reaped;

/// The oidc-provider version `./scripts/test` installs.
const OIDC_PROVIDER_VERSION: &str = "9.13.3";

/// A running provider, stopped when dropped.
pub struct OidcProvider {
    /// Its issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
    _child: Reaped,
    /// Its standard output, kept open while it runs.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl OidcProvider {
    /// Starts a provider with `env` (OIDC_ID_TOKEN_TTL,
    /// OIDC_DEVICE_CODE_TTL, OIDC_REDIRECT_URIS, … as provider.mjs reads
    /// them).
    pub fn start(env: &[(&str, &str)]) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let module = std::env::var_os("POLICYHUB_OIDC_PROVIDER_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/tools/oidc/node_modules/oidc-provider"));
        assert!(
            module.join("package.json").exists(),
            "oidc-provider is not installed at {}: run ./scripts/test, or \
             npm install --prefix target/tools/oidc oidc-provider@{OIDC_PROVIDER_VERSION}",
            module.display()
        );
        // A Node that hangs before it listens (seen, rarely, on a loaded
        // machine) is killed and started again rather than waited on.
        for _ in 0..3 {
            let mut child = Command::new("node")
                .arg(root.join("tests/oidc/provider.mjs"))
                .env("OIDC_PROVIDER_MODULE", &module)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start node tests/oidc/provider.mjs");
            let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let read = stdout.read_line(&mut line);
                sender.send((read.map(|_| line), stdout)).ok();
            });
            let Ok((line, stdout)) = receiver.recv_timeout(std::time::Duration::from_secs(30))
            else {
                child.kill().ok();
                child.wait().ok();
                continue;
            };
            let line = line.expect("read the issuer");
            let issuer = line.trim().to_owned();
            if !issuer.starts_with("http://127.0.0.1:") {
                child.kill().ok();
                child.wait().ok();
                panic!("the provider did not start: it printed {line:?}");
            }
            return OidcProvider {
                issuer,
                _child: Reaped(child),
                _stdout: stdout,
            };
        }
        panic!("the provider printed no issuer within 30 s, three times");
    }

    /// Signs with a new key from now on, listed first in the JWKS; the old
    /// key stays listed when `keep_old`.
    pub async fn rotate_key(&self, keep_old: bool) -> String {
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/test/rotate-key?keep={keep_old}", self.issuer))
            .send()
            .await
            .expect("rotate the key")
            .json()
            .await
            .expect("the new key id");
        answer["kid"].as_str().expect("kid").to_owned()
    }

    /// The provider's answer to a refresh with `refresh_token`, as any
    /// client would get it.
    pub async fn refresh(&self, refresh_token: &str) -> (StatusCode, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", "policyhub"),
            ])
            .send()
            .await
            .expect("ask the token endpoint");
        (response.status(), response.json().await.expect("json"))
    }
}

/// A page the browser is on.
#[derive(Debug)]
pub struct Page {
    pub url: Url,
    pub status: StatusCode,
    pub body: String,
}

/// One form of a page: where it posts and its fields as written.
struct Form {
    action: Url,
    fields: Vec<(String, String)>,
}

impl Page {
    /// The forms of the page.
    fn forms(&self) -> Vec<Form> {
        self.body
            .split("<form")
            .skip(1)
            .map(|rest| {
                let (tag, inner) = rest.split_once('>').unwrap_or((rest, ""));
                let inner = inner.split("</form>").next().unwrap_or_default();
                let action = attribute(tag, "action").unwrap_or_default();
                let fields = inner
                    .split("<input")
                    .skip(1)
                    .filter_map(|input| {
                        let tag = input.split('>').next().unwrap_or_default();
                        Some((
                            attribute(tag, "name")?,
                            attribute(tag, "value").unwrap_or_default(),
                        ))
                    })
                    .collect();
                Form {
                    action: self.url.join(&action).expect("a form action"),
                    fields,
                }
            })
            .collect()
    }
}

/// The value of attribute `name` of an HTML tag's text.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))?;
    let value = &tag[at + name.len() + 3..];
    let value = &value[..value.find('"')?];
    Some(
        value
            .replace("&amp;", "&")
            .replace("&#34;", "\"")
            .replace("&quot;", "\""),
    )
}

/// A person's browser: cookies, redirects followed one by one.
pub struct Browser {
    http: reqwest::Client,
    cookies: Mutex<HashMap<String, String>>,
}

impl Browser {
    pub fn new() -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Mutex::new(HashMap::new()),
        }
    }

    /// Opens `url`, following redirects.
    pub async fn open(&self, url: &str) -> Page {
        self.go(url.parse().expect("a URL"), None).await
    }

    /// Submits the form of `page` whose action contains `action`, with its
    /// fields as written and `values` set.
    pub async fn submit(&self, page: &Page, action: &str, values: &[(&str, &str)]) -> Page {
        let form = page
            .forms()
            .into_iter()
            .find(|form| form.action.as_str().contains(action))
            .unwrap_or_else(|| panic!("no form posting to {action} on {page:#?}"));
        let mut fields = form.fields;
        for (name, value) in values {
            fields.retain(|(field, _)| field != name);
            fields.push(((*name).to_owned(), (*value).to_owned()));
        }
        self.go(form.action, Some(fields)).await
    }

    async fn go(&self, mut url: Url, mut form: Option<Vec<(String, String)>>) -> Page {
        for _ in 0..20 {
            let request = match form.take() {
                Some(fields) => self.http.post(url.clone()).form(&fields),
                None => self.http.get(url.clone()),
            };
            let cookie = self
                .cookies
                .lock()
                .unwrap()
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            let response = request
                .header(header::COOKIE, cookie)
                .send()
                .await
                .unwrap_or_else(|error| panic!("the browser cannot open {url}: {error}"));
            self.keep_cookies(response.headers());
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()[header::LOCATION].to_str().unwrap();
                url = url.join(location).expect("a redirect");
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            return Page { url, status, body };
        }
        panic!("too many redirects at {url}");
    }

    fn keep_cookies(&self, headers: &header::HeaderMap) {
        let mut cookies = self.cookies.lock().unwrap();
        for set in headers.get_all(header::SET_COOKIE) {
            let text = set.to_str().unwrap_or_default();
            let Some((name, value)) = text.split(';').next().and_then(|pair| pair.split_once('='))
            else {
                continue;
            };
            let expired = text
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if expired || value.is_empty() {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    /// Signs in as `login` on the provider's login page and answers its
    /// consent page: allows, or denies when `allow` is false.
    pub async fn sign_in(&self, page: Page, login: &str, allow: bool) -> Page {
        assert!(page.body.contains("Sign in"), "not a login page: {page:#?}");
        let password = format!("{login}-password");
        let consent = self
            .submit(
                &page,
                "/login",
                &[("login", login), ("password", &password)],
            )
            .await;
        assert!(
            consent.body.contains("Authorize"),
            "not a consent page: {consent:#?}"
        );
        self.submit(&consent, if allow { "/confirm" } else { "/abort" }, &[])
            .await
    }

    /// Enters `user_code` on the provider's device page at
    /// `verification_uri`, confirms it and signs in as `login`.
    pub async fn approve_device(
        &self,
        verification_uri: &str,
        user_code: &str,
        login: &str,
        allow: bool,
    ) -> Page {
        let input = self.open(verification_uri).await;
        let confirm = self
            .submit(&input, "/device", &[("user_code", user_code)])
            .await;
        let login_page = self.submit(&confirm, "/device", &[]).await;
        self.sign_in(login_page, login, allow).await
    }
}
