//! The console with its scheduler gone, as the user's browser meets it: every page still renders
//! — what could not be read named in a banner, the rest as it stands — instead of failing; the
//! login still holds.

use std::time::Duration;

use aic_plaza::{start, PlazaSettings};
use aic_protocol::certs::{CertificateAuthority, Validity};
use aic_protocol::Role;

#[test]
fn pages_render_with_a_banner_when_the_scheduler_does_not_answer() {
    aic_protocol::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("plaza-test").unwrap();
    ca.save(dir.path()).unwrap();
    let identity = ca
        .issue(Role::Client, "alice", &[], Validity::default())
        .unwrap()
        .save(dir.path(), "alice")
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let plaza = runtime
        .block_on(start(
            PlazaSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                // Nothing listens there: every read fails at once.
                scheduler: "127.0.0.1:9".into(),
                identity,
                wallet: None,
            },
            shutdown.clone(),
        ))
        .unwrap();
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let login = client.get(&plaza.url).send().unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let base = format!("http://{}", plaza.addr);
    for path in ["/", "/datasets", "/models", "/market", "/chain"] {
        let response = client
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let page = response.text().unwrap();
        assert!(
            page.contains("class=\"banner\"") && page.contains("could not be read"),
            "{path}: {page}"
        );
    }
    // A page that needs the ledger to exist at all says so with its status.
    let asset = client
        .get(format!("{base}/assets/00000000000000000000000000000001"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(asset.status().as_u16(), 503);
    shutdown.cancel();
    runtime.block_on(plaza.stopped).unwrap();
}
