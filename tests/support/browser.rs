//! A browser-like HTTP client: a cookie jar, no automatic redirects (each
//! hop is visible), navigation `Accept` headers, and helpers that fill in
//! the test provider's login, consent and logout-confirmation forms.
//!
//! Like a real browser, the jar does not separate ports: the provider's
//! cookies (`_session`, `_session.sig`, `_interaction*`) set on
//! `127.0.0.1:P1` are also sent to a gate on `127.0.0.1:P2`, and so reach the
//! upstream as "application cookies". Start the provider on another loopback
//! address (`IdpOptions::host = "127.0.0.2"`) to keep them apart.
//!
//! The provider's browser session decides who signs in: once a browser has
//! signed in as alice, `sign_in(.., "bob", ..)` with the same browser ends
//! signed in as alice (no login form is shown). Use one `Browser` per user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use regex::Regex;
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::redirect::Policy;
use url::Url;

/// Redirect hops [`Browser::follow`] takes before giving up.
pub const MAX_REDIRECTS: usize = 20;

/// Path of the gate's login redirect URI.
pub const CALLBACK_PATH: &str = "/sso/authorization-code/callback";

const NAV_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) ssogate-e2e-browser/1.0";

/// One response, read to the end.
#[derive(Clone, Debug)]
pub struct Page {
    pub status: u16,
    /// The URL that was requested.
    pub url: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
            && self.headers.contains_key(header::LOCATION)
    }

    /// The `Location` header resolved against [`Page::url`].
    pub fn location(&self) -> Option<String> {
        let raw = self.headers.get(header::LOCATION)?.to_str().ok()?;
        Some(resolve(&self.url, raw))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All `Set-Cookie` header values.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {}",
                self.status, self.url, self.body
            )
        })
    }

    /// The HTML forms on this page.
    pub fn forms(&self) -> Vec<Form> {
        parse_forms(&self.url, &self.body)
    }
}

/// An HTML form as a browser would submit it (first submit button excluded
/// unless it has a name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    /// Absolute URL the form posts to.
    pub action: String,
    /// Upper case, `GET` or `POST`.
    pub method: String,
    /// `id` attribute, if any.
    pub id: Option<String>,
    /// name/value pairs of its inputs (all types; text/password inputs with
    /// their `value` attribute, usually empty), `<select>`s are ignored.
    pub fields: Vec<(String, String)>,
}

impl Form {
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) a field.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(f) => value.clone_into(&mut f.1),
            None => self.fields.push((name.to_owned(), value.to_owned())),
        }
    }

    /// The test provider's login form (`/interaction/<uid>/login`).
    fn is_login(&self) -> bool {
        self.has_field("password")
            && path_of(&self.action)
                .is_some_and(|p| p.starts_with("/interaction/") && p.ends_with("/login"))
    }

    fn is_provider_consent(&self) -> bool {
        path_of(&self.action)
            .is_some_and(|p| p.starts_with("/interaction/") && p.ends_with("/confirm"))
    }

    fn is_provider_logout(&self) -> bool {
        path_of(&self.action).is_some_and(|p| p.ends_with("/session/end/confirm"))
    }
}

/// What a browser drive ends on.
enum Stop {
    /// The final non-redirect page.
    Final,
    /// Right before requesting the gate's login callback.
    BeforeCallback,
}

/// A browser with its own cookie jar.
#[derive(Clone)]
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<Jar>,
}

impl Browser {
    /// `ca_pem`: an extra trusted root (the tests' throwaway CA), besides the
    /// usual web roots.
    pub fn new(ca_pem: Option<&str>) -> Browser {
        let jar = Arc::new(Jar::default());
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(NAV_ACCEPT));
        headers.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_static("en-US,en;q=0.5"),
        );
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .cookie_provider(Arc::clone(&jar))
            .redirect(Policy::none())
            .no_proxy()
            .default_headers(headers)
            .user_agent(USER_AGENT)
            .timeout(Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA PEM");
            builder = builder.add_root_certificate(cert);
        }
        Browser {
            client: builder.build().expect("reqwest client"),
            jar,
        }
    }

    /// The underlying client (same cookie jar, no redirects, browser headers).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn jar(&self) -> &Arc<Jar> {
        &self.jar
    }

    /// One GET, no redirects followed.
    pub async fn get(&self, url: &str) -> Page {
        self.send(self.client.get(url), url).await
    }

    /// One form POST (`application/x-www-form-urlencoded`), no redirects followed.
    pub async fn post_form(&self, url: &str, fields: &[(String, String)]) -> Page {
        self.send(self.client.post(url).form(fields), url).await
    }

    /// Sends any request built from [`Browser::client`] and reads the page.
    pub async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Page {
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
        to_page(url, resp).await
    }

    /// Submits a form as it is.
    pub async fn submit(&self, form: &Form) -> Page {
        if form.method == "GET" {
            let mut url = Url::parse(&form.action).expect("form action URL");
            url.query_pairs_mut()
                .clear()
                .extend_pairs(form.fields.iter());
            self.get(url.as_str()).await
        } else {
            self.post_form(&form.action, &form.fields).await
        }
    }

    /// GET `url` and follow up to [`MAX_REDIRECTS`] redirects (always with GET,
    /// relative `Location`s resolved). Returns the last page and the URLs
    /// requested, `url` first.
    pub async fn follow(&self, url: &str) -> (Page, Vec<String>) {
        let page = self.get(url).await;
        let mut visited = vec![url.to_owned()];
        let page = self.follow_page(page, &mut visited).await;
        (page, visited)
    }

    /// Follows the redirects of a page already fetched; the URLs requested
    /// are appended to `visited`.
    pub async fn follow_page(&self, mut page: Page, visited: &mut Vec<String>) -> Page {
        for _ in 0..MAX_REDIRECTS {
            let Some(next) = page.location().filter(|_| page.is_redirect()) else {
                return page;
            };
            visited.push(next.clone());
            page = self.get(&next).await;
        }
        panic!("more than {MAX_REDIRECTS} redirects: {visited:?}");
    }

    /// Signs in through the gate: GET `start_url`, follow to the provider,
    /// fill in the login form, confirm consent if asked, follow back through
    /// the gate's callback and return the final page (normally the
    /// upstream's answer). With a provider session already there, no form is
    /// shown and none is filled. When the credentials are rejected the
    /// provider's login page (status 200, with an error text) is returned.
    pub async fn sign_in(&self, start_url: &str, user: &str, password: &str) -> Page {
        self.drive(start_url, Some((user, password)), Stop::Final)
            .await
            .0
    }

    /// Like [`Browser::sign_in`], and also the URLs requested on the way.
    pub async fn sign_in_visited(
        &self,
        start_url: &str,
        user: &str,
        password: &str,
    ) -> (Page, Vec<String>) {
        self.drive(start_url, Some((user, password)), Stop::Final)
            .await
    }

    /// Like [`Browser::sign_in`] but stops right before requesting the gate's
    /// `/sso/authorization-code/callback` and returns that URL (with `code`,
    /// `state`, `iss`). Panics when the flow ends elsewhere.
    pub async fn sign_in_until_callback(
        &self,
        start_url: &str,
        user: &str,
        password: &str,
    ) -> String {
        let (page, visited) = self
            .drive(start_url, Some((user, password)), Stop::BeforeCallback)
            .await;
        match page.location() {
            Some(cb) if page.is_redirect() && is_callback(&cb) => cb,
            _ => panic!(
                "sign-in from {start_url} did not reach {CALLBACK_PATH}; ended on {} {} after {visited:?}:\n{}",
                page.status,
                page.url,
                snippet(&page.body)
            ),
        }
    }

    /// Signs out: GET `logout_url` (the gate's `/sso/logout`), follow
    /// redirects, confirm the provider's sign-out page (and submit its
    /// auto-posting form when it has no session), follow the redirects back
    /// and return the final page and the URLs requested.
    pub async fn sign_out(&self, logout_url: &str) -> (Page, Vec<String>) {
        self.drive(logout_url, None, Stop::Final).await
    }

    /// Navigates from `start_url`, following redirects and submitting the
    /// provider's forms: login (when credentials are given, once), consent,
    /// sign-out confirmation.
    async fn drive(
        &self,
        start_url: &str,
        creds: Option<(&str, &str)>,
        stop: Stop,
    ) -> (Page, Vec<String>) {
        let mut visited = vec![start_url.to_owned()];
        let mut page = self.get(start_url).await;
        let mut logged_in = false;
        for _ in 0..(3 * MAX_REDIRECTS) {
            if page.is_redirect() {
                let next = page.location().expect("redirect Location");
                if matches!(stop, Stop::BeforeCallback) && is_callback(&next) {
                    return (page, visited);
                }
                visited.push(next.clone());
                page = self.get(&next).await;
                continue;
            }
            if page.status != 200 {
                return (page, visited);
            }
            let forms = page.forms();
            let Some(mut form) = forms.into_iter().find(|f| {
                (f.is_login() && creds.is_some())
                    || f.is_provider_consent()
                    || f.is_provider_logout()
            }) else {
                return (page, visited);
            };
            if form.is_login() {
                let (user, password) = creds.expect("credentials");
                if logged_in {
                    // The provider showed the login form again: wrong credentials.
                    return (page, visited);
                }
                logged_in = true;
                form.set("login", user);
                form.set("password", password);
            }
            visited.push(form.action.clone());
            page = self.submit(&form).await;
        }
        panic!("navigation from {start_url} did not settle: {visited:?}");
    }

    /// Cookies the jar would send to `url`, as (name, value).
    pub fn cookies_for(&self, url: &str) -> Vec<(String, String)> {
        let url = Url::parse(url).expect("URL");
        let Some(header) = self.jar.cookies(&url) else {
            return Vec::new();
        };
        header
            .to_str()
            .unwrap_or_default()
            .split(';')
            .filter_map(|pair| {
                let pair = pair.trim();
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (!name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
            })
            .collect()
    }

    /// The value of one cookie the jar would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.cookies_for(url)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Stores a cookie as if `url` had answered with `Set-Cookie: <raw>`
    /// (e.g. `"__Host-ssogate=tampered; Path=/; Secure"`); a cookie of the same
    /// name, domain and path is replaced.
    pub fn set_cookie_header(&self, url: &str, raw: &str) {
        let url = Url::parse(url).expect("URL");
        self.jar.add_cookie_str(raw, &url);
    }
}

/// Is this the gate's login callback URL?
pub fn is_callback(url: &str) -> bool {
    path_of(url).is_some_and(|p| p == CALLBACK_PATH)
}

/// Query parameter of an absolute URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `base` joined with `reference` as a browser resolves a link.
pub fn resolve(base: &str, reference: &str) -> String {
    match Url::parse(base).and_then(|b| b.join(reference)) {
        Ok(u) => u.to_string(),
        Err(_) => reference.to_owned(),
    }
}

fn path_of(url: &str) -> Option<String> {
    Url::parse(url).ok().map(|u| u.path().to_owned())
}

fn snippet(body: &str) -> &str {
    let end = body.char_indices().nth(2000).map_or(body.len(), |(i, _)| i);
    &body[..end]
}

async fn to_page(url: &str, resp: reqwest::Response) -> Page {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading the body from {url} failed: {e:?}"));
    Page {
        status,
        url: url.to_owned(),
        headers,
        body,
    }
}

// ------------------------------------------------------------------ forms

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("regex"))
}

/// Attributes of one start tag (`<input a="b" c='d' e=f g>`), names lower-cased,
/// values HTML-unescaped.
fn attributes(tag: &str) -> Vec<(String, String)> {
    static ATTR: OnceLock<Regex> = OnceLock::new();
    let attr = re(
        &ATTR,
        r#"(?s)([A-Za-z_:][-A-Za-z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?"#,
    );
    // Skip the tag name.
    let inner = tag
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim_end_matches('/');
    let inner = inner.find(char::is_whitespace).map_or("", |i| &inner[i..]);
    attr.captures_iter(inner)
        .map(|c| {
            let name = c[1].to_ascii_lowercase();
            let value = c
                .get(2)
                .or_else(|| c.get(3))
                .or_else(|| c.get(4))
                .map_or("", |m| m.as_str());
            (name, unescape(value))
        })
        .collect()
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The forms of an HTML page. Forgiving: inputs and buttons that point at a
/// form with `form="id"` outside it are counted for that form; `<select>` and
/// `<textarea>` are ignored; the first submit button contributes its
/// name/value (as when a user presses it), other buttons do not.
pub fn parse_forms(page_url: &str, html: &str) -> Vec<Form> {
    static FORM: OnceLock<Regex> = OnceLock::new();
    static CONTROL: OnceLock<Regex> = OnceLock::new();
    let form_re = re(&FORM, r"(?is)<form\b[^>]*>(.*?)(?:</form\s*>|$)");
    let control_re = re(&CONTROL, r"(?is)<(input|button)\b[^>]*>");

    struct Raw {
        form: Form,
        start: usize,
        end: usize,
        submitted: bool,
    }
    let mut raws: Vec<Raw> = Vec::new();
    for m in form_re.captures_iter(html) {
        let whole = m.get(0).expect("match");
        let open_end = whole
            .as_str()
            .find('>')
            .map_or(whole.end(), |i| whole.start() + i + 1);
        let attrs = attributes(&html[whole.start()..open_end]);
        let action = attr(&attrs, "action")
            .filter(|a| !a.is_empty())
            .unwrap_or(page_url);
        let method = attr(&attrs, "method").unwrap_or("get").to_ascii_uppercase();
        raws.push(Raw {
            form: Form {
                action: resolve(page_url, action),
                method: if method == "POST" {
                    method
                } else {
                    "GET".to_owned()
                },
                id: attr(&attrs, "id").map(str::to_owned),
                fields: Vec::new(),
            },
            start: whole.start(),
            end: whole.end(),
            submitted: false,
        });
    }

    for m in control_re.captures_iter(html) {
        let whole = m.get(0).expect("match");
        let kind = m[1].to_ascii_lowercase();
        let attrs = attributes(whole.as_str());
        let owner = match attr(&attrs, "form") {
            Some(id) => raws.iter().position(|r| r.form.id.as_deref() == Some(id)),
            None => raws
                .iter()
                .position(|r| r.start <= whole.start() && whole.end() <= r.end),
        };
        let Some(owner) = owner else { continue };
        let ty = attr(&attrs, "type")
            .unwrap_or(if kind == "button" { "submit" } else { "text" })
            .to_ascii_lowercase();
        let raw = &mut raws[owner];
        let is_submit = ty == "submit" || ty == "image";
        if is_submit {
            if raw.submitted {
                continue;
            }
            raw.submitted = true;
        }
        if matches!(ty.as_str(), "button" | "reset" | "file") {
            continue;
        }
        if (ty == "checkbox" || ty == "radio") && attr(&attrs, "checked").is_none() {
            continue;
        }
        let Some(name) = attr(&attrs, "name").filter(|n| !n.is_empty()) else {
            continue;
        };
        if attr(&attrs, "disabled").is_some() {
            continue;
        }
        let default = if ty == "checkbox" || ty == "radio" {
            "on"
        } else {
            ""
        };
        let value = attr(&attrs, "value").unwrap_or(default);
        raw.form.fields.push((name.to_owned(), value.to_owned()));
    }

    raws.into_iter().map(|r| r.form).collect()
}

/// Decodes the HTML character references forms use.
pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    static ENTITY: OnceLock<Regex> = OnceLock::new();
    let entity = re(&ENTITY, r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z]+);");
    entity
        .replace_all(s, |c: &regex::Captures<'_>| {
            let e = &c[1];
            let decoded = if let Some(hex) = e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
            } else if let Some(dec) = e.strip_prefix('#') {
                dec.parse().ok().and_then(char::from_u32)
            } else {
                match e {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "nbsp" => Some('\u{a0}'),
                    _ => None,
                }
            };
            decoded.map_or_else(|| c[0].to_owned(), String::from)
        })
        .into_owned()
}
