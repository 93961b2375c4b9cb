//! The console with its scheduler gone, as the user's browser meets it: every page still renders
//! — what could not be read named in a banner, the rest as it stands — instead of failing; the
//! login still holds. Its forms are refused without a fresh CSRF token of its own, check their
//! fields on the server (each error beside its field), and send nothing the grid cannot take.

use std::time::Duration;

use aic_plaza::{start, PlazaSettings};
use aic_protocol::certs::{CertificateAuthority, IdentityFiles, Validity};
use aic_protocol::Role;

struct Browser {
    client: reqwest::blocking::Client,
    base: String,
    cookie: String,
}

impl Browser {
    fn login(url: &str, addr: std::net::SocketAddr) -> Self {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let login = client.get(url).send().unwrap();
        assert_eq!(login.status().as_u16(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        Browser {
            client,
            base: format!("http://{addr}"),
            cookie,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }
}

/// The value of the first hidden field `name` on a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field: {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

fn console(
    runtime: &tokio::runtime::Runtime,
    identity: &IdentityFiles,
    form_lifetime: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> aic_plaza::Plaza {
    runtime
        .block_on(start(
            PlazaSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                remote_https: None,
                // Nothing listens at either: every read fails at once, on each replica in turn.
                schedulers: vec!["127.0.0.1:9".into(), "127.0.0.1:11".into()],
                identity: identity.clone(),
                wallet: Some(aic_ledger::Keypair::generate()),
                gateway: None,
                form_lifetime,
            },
            shutdown.clone(),
        ))
        .unwrap()
}

/// A cluster CA in `dir`, and the user's client identity from it.
fn cluster_ca(dir: &std::path::Path) -> (CertificateAuthority, IdentityFiles) {
    aic_protocol::install_crypto_provider();
    let ca = CertificateAuthority::generate("plaza-test").unwrap();
    ca.save(dir).unwrap();
    let identity = ca
        .issue(Role::Client, "alice", &[], Validity::default())
        .unwrap()
        .save(dir, "alice")
        .unwrap();
    (ca, identity)
}

#[test]
fn pages_render_with_a_banner_and_forms_send_nothing_when_the_scheduler_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_, identity) = cluster_ca(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let plaza = console(&runtime, &identity, Duration::from_secs(3600), &shutdown);
    let browser = Browser::login(&plaza.url, plaza.addr);
    for path in [
        "/",
        "/datasets",
        "/models",
        "/market",
        "/chain",
        "/jobs",
        "/builder",
        "/wallet",
    ] {
        let (code, page) = browser.get(path);
        assert_eq!(code, 200, "{path}");
        assert!(
            page.contains("class=\"banner\"") && page.contains("could not be read"),
            "{path}: {page}"
        );
    }
    // A page that needs the ledger to exist at all says so with its status.
    let (code, _) = browser.get("/assets/00000000000000000000000000000001");
    assert_eq!(code, 503);
    let (code, page) = browser.get("/jobs/not-a-job");
    assert_eq!(code, 404, "{page}");
    // A job page renders its frame and says what it could not read.
    let (code, page) = browser.get(&format!("/jobs/{}", aic_protocol::JobId::random()));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("could not be read"), "{page}");

    // Forms: no token, a forged one, then a good one with bad fields.
    let (_, wallet) = browser.get("/wallet");
    let csrf = hidden(&wallet, "csrf");
    let key = hidden(&wallet, "idempotency");
    let (code, page) = browser.post(
        "/wallet/transfer",
        &[("idempotency", &key), ("to", "x"), ("amount", "1")],
    );
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("no CSRF token"), "{page}");
    let forged = format!("{}.{}", csrf.split('.').next().unwrap(), "0".repeat(64));
    let (code, page) = browser.post(
        "/wallet/transfer",
        &[
            ("csrf", &forged),
            ("idempotency", &key),
            ("to", "x"),
            ("amount", "1"),
        ],
    );
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("not issued by this console"), "{page}");
    let (code, page) = browser.post(
        "/wallet/transfer",
        &[
            ("csrf", &csrf),
            ("idempotency", &key),
            ("to", "nobody"),
            ("amount", "-3"),
        ],
    );
    assert_eq!(code, 422, "{page}");
    assert!(
        page.contains("id=\"to-error\"") && page.contains("Not an address"),
        "{page}"
    );
    assert!(
        page.contains("id=\"amount-error\"") && page.contains("is not an amount"),
        "{page}"
    );
    // Good fields, but the grid is down: nothing was sent, said beside the amount, and the same
    // form (its key released) may be sent again once the grid is back.
    let to = aic_ledger::Keypair::generate().address().to_string();
    for _ in 0..2 {
        let (code, page) = browser.post(
            "/wallet/transfer",
            &[
                ("csrf", &csrf),
                ("idempotency", &key),
                ("to", &to),
                ("amount", "1.5"),
            ],
        );
        assert_eq!(code, 422, "{page}");
        assert!(
            page.contains("could not be reached, so nothing was sent"),
            "{page}"
        );
    }
    let (code, page) = browser.post(
        "/builder/model",
        &[
            ("csrf", &csrf),
            ("idempotency", &key),
            ("spec", "name = \"x\"\nnot toml at all ["),
        ],
    );
    assert_eq!(code, 422, "{page}");
    assert!(
        page.contains("id=\"spec-error\"") && page.contains("does not read"),
        "{page}"
    );
    // Descriptions up to the model format's 64 KiB reach the parser (not the framework's 16 KiB
    // form cap); a longer one is refused beside the field.
    // (The first is of characters urlencoding triples.)
    for (filler, says) in [
        ("%&=".repeat((40 << 10) / 3), "does not read"),
        ("a".repeat(70 << 10), "A description is at most"),
    ] {
        let spec = format!("name = \"x\"\n# {filler}\nnot toml [");
        let (code, page) = browser.post(
            "/builder/model",
            &[("csrf", &csrf), ("idempotency", &key), ("spec", &spec)],
        );
        assert_eq!(code, 422, "{} bytes", spec.len());
        assert!(page.contains(says), "{} bytes: {page}", spec.len());
    }

    // The dataset upload: refused beside its field when too big (counted as it arrives), of
    // the wrong kind, or without the column to predict — before pass 1 reads a byte of it.
    let (_, import) = browser.get("/datasets/import");
    let (csrf, key) = (hidden(&import, "csrf"), hidden(&import, "idempotency"));
    let upload = |file_name: &str, bytes: Vec<u8>, label: &str| {
        let form = reqwest::blocking::multipart::Form::new()
            .text("csrf", csrf.clone())
            .text("idempotency", key.clone())
            .text("label", label.to_string())
            .text("fee", "1")
            .text("replicas", "1")
            .part(
                "file",
                reqwest::blocking::multipart::Part::bytes(bytes).file_name(file_name.to_string()),
            );
        let response = browser
            .client
            .post(format!("{}/datasets/import", browser.base))
            .header("cookie", &browser.cookie)
            .multipart(form)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let too_big = vec![b'1'; aic_plaza::import::MAX_UPLOAD_BYTES as usize + 1];
    let (code, page) = upload("big.csv", too_big, "y");
    assert_eq!(code, 422, "{page}");
    assert!(
        page.contains("id=\"file-error\"") && page.contains("takes files up to 64 MiB"),
        "{page}"
    );
    let (code, page) = upload("notes.txt", b"a,y\n1,2\n".to_vec(), "y");
    assert_eq!(code, 422);
    assert!(page.contains("Choose a .csv or .parquet file"), "{page}");
    let (code, page) = upload("small.csv", b"a,y\n1,2\n".to_vec(), "");
    assert_eq!(code, 422);
    assert!(page.contains("id=\"label-error\""), "{page}");
    // A column that cannot be imported is named by pass 1, and nothing is stored.
    let (code, page) = upload("small.csv", b"a,y\n1,x\n2,z\n".to_vec(), "no-such-column");
    assert_eq!(code, 422);
    assert!(page.contains("Not imported, nothing stored"), "{page}");

    // A console whose forms live no time at all: every form it rendered has expired.
    let instant = console(&runtime, &identity, Duration::ZERO, &shutdown);
    let browser = Browser::login(&instant.url, instant.addr);
    let (_, wallet) = browser.get("/wallet");
    let (code, page) = browser.post(
        "/wallet/top-up",
        &[
            ("csrf", &hidden(&wallet, "csrf")),
            ("idempotency", &hidden(&wallet, "idempotency")),
            ("amount", "1"),
        ],
    );
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("the form expired"), "{page}");

    shutdown.cancel();
    runtime.block_on(plaza.stopped).unwrap();
    runtime.block_on(instant.stopped).unwrap();
}

/// Beyond loopback only over HTTPS: refused without a certificate; with one from the cluster
/// CA the login goes over TLS and the cookie is marked Secure; plain HTTP gets nothing.
#[test]
fn the_console_listens_beyond_loopback_only_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, identity) = cluster_ca(dir.path());
    let server = ca
        .issue(
            Role::Client,
            "console",
            &["127.0.0.1".to_string()],
            Validity::default(),
        )
        .unwrap()
        .save(dir.path(), "console")
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = |remote_https: Option<IdentityFiles>| PlazaSettings {
        listen: "0.0.0.0:0".parse().unwrap(),
        remote_https,
        schedulers: vec!["127.0.0.1:9".into()],
        identity: identity.clone(),
        wallet: None,
        gateway: None,
        form_lifetime: Duration::from_secs(60),
    };
    let refused = runtime.block_on(start(settings(None), shutdown.clone()));
    assert!(matches!(refused, Err(aic_plaza::PlazaError::NotLoopback(_))));

    let plaza = runtime
        .block_on(start(settings(Some(server)), shutdown.clone()))
        .unwrap();
    assert!(plaza.url.starts_with("https://"), "{}", plaza.url);
    let port = plaza.addr.port();
    let token = plaza.url.split("token=").nth(1).unwrap();
    let ca_pem = std::fs::read(&identity.ca).unwrap();
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
        .build()
        .unwrap();
    let login = client
        .get(format!("https://127.0.0.1:{port}/?token={token}"))
        .send()
        .unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Without the token, over TLS: refused as on loopback.
    let stranger = client.get(format!("https://127.0.0.1:{port}/")).send().unwrap();
    assert_eq!(stranger.status().as_u16(), 401);
    // Plain HTTP to the same port is no way in.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/?token={token}"))
        .send();
    assert!(plain.map_or(true, |r| !r.status().is_success() && !r.status().is_redirection()));
    shutdown.cancel();
    runtime.block_on(plaza.stopped).unwrap();
}
