//! The AI PLAZA story in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` over WebDriver): a user imports a CSV file, previews it in the Easy AI Builder,
//! pastes a model description, sees the quote, trains, watches the job's progress arrive over server-sent events,
//! opens the trained model's card and lineage, finds the job on the dataset's page, lists the
//! model for sale and publishes it; a second user buys it from a console of their own; the call
//! the page gives is pasted into a shell and answered; the chain is verified. Each step
//! saves a screenshot under the test target's `plaza-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;

/// How long the walk waits for one page element (a job to finish is the longest).
const ELEMENT_WAIT: Duration = Duration::from_secs(30);
/// How often a page that should be left is looked at again.
const PAGE_CHECK: Duration = Duration::from_millis(50);
const JOB_WAIT: Duration = Duration::from_secs(300);

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (ops/install-test-deps.sh installs chromium-driver)");
    // Held from here, so it is stopped however the wait below ends.
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // chromedriver is ready when its port accepts: bounded in tries.
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return driver;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromedriver did not listen on port {port}");
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1500"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plaza-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn snap(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits for an element; when it never comes, fails with what the page said instead (and a
/// screenshot of it).
async fn element(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client
        .wait()
        .at_most(ELEMENT_WAIT)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(found) => found,
        Err(error) => {
            snap(client, "failure").await;
            let page = match client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let url = client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            panic!("{css}: {error} on {url}; the page says:\n{page}");
        }
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    element(client, css).await.text().await.unwrap()
}

/// Clicks a link or button that leads to another page, and waits until the page it was on is
/// gone (its root element stale), so the next look is at the new page: a click's navigation
/// can start after the click answers, and a loaded machine widens that gap.
async fn click(client: &Client, css: &str) {
    let target = element(client, css).await;
    leaving(client, target.click()).await;
}

/// Fills a form's fields by name and submits it, as a user typing and pressing its button.
async fn fill_and_send(client: &Client, form: &str, fields: &[(&str, &str)]) {
    let form = client.form(Locator::Css(form)).await.unwrap();
    for (name, value) in fields {
        form.set_by_name(name, value).await.unwrap();
    }
    leaving(client, form.submit()).await;
}

/// Runs `action`, which navigates, and answers once the page before it is gone.
async fn leaving<T>(
    client: &Client,
    action: impl std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
) {
    let before = client.find(Locator::Css("html")).await.unwrap();
    action.await.unwrap();
    let checks = ELEMENT_WAIT.as_millis() / PAGE_CHECK.as_millis();
    for _ in 0..checks {
        // Stale, or (Chromium, mid-navigation) an unknown-error "node does not belong to the
        // document": either way the element's page is gone. A broken session fails at the next
        // step with its own error.
        match before.tag_name().await {
            Err(_) => return,
            Ok(_) => tokio::time::sleep(PAGE_CHECK).await,
        }
    }
    snap(client, "failure").await;
    panic!("the page did not change within {ELEMENT_WAIT:?}");
}

/// Starts `aic plaza` for another wallet, as a second user would; answers its URL. Its output
/// is drained for as long as it runs (a closed pipe would stop it at its next line).
fn second_console(data_dir: &Path, wallet: &Path) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["plaza", "--listen", "127.0.0.1:0", "--profile"])
        .arg(data_dir.join("client.toml"))
        .arg("--wallet")
        .arg(wallet)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut output, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix("AI PLAZA: ")
        .unwrap_or_else(|| panic!("aic plaza printed {line:?}"))
        .to_string();
    (child, url)
}

/// The whole story, on the running devnet.
pub fn walk_the_story(status: &Value, data_dir: &Path) {
    let driver = start_driver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(walk(&driver, status, data_dir));
}

async fn walk(driver: &Driver, status: &Value, data_dir: &Path) {
    let url = status["plaza"]["url"].as_str().unwrap();
    let base = url.split("/?").next().unwrap().to_string();
    let user = browser(driver).await;
    user.goto(url).await.unwrap();
    assert!(text_of(&user, "#nodes").await.contains("compute-1"));
    snap(&user, "01-network").await;

    // A dataset imported from the browser: a file chosen, the column to predict named.
    let upload = tempfile::tempdir().unwrap();
    let csv = upload.path().join("sides.csv");
    std::fs::write(&csv, sides_csv(1200)).unwrap();
    click(&user, "nav a[href='/datasets']").await;
    click(&user, "#import-link").await;
    element(&user, "input[name='file']")
        .await
        .send_keys(csv.to_str().unwrap())
        .await
        .unwrap();
    fill_and_send(&user, "#import-form", &[("label", "side"), ("fee", "0.5")]).await;
    assert!(text_of(&user, "#notice").await.contains("Imported"));
    let imported = user.current_url().await.unwrap();
    let dataset = imported.path().rsplit('/').next().unwrap().to_string();
    snap(&user, "02-imported").await;

    // The Easy AI Builder: that dataset, previewed.
    click(&user, "nav a[href='/builder']").await;
    click(
        &user,
        &format!("#builder-datasets a[href='/builder?dataset={dataset}']"),
    )
    .await;
    let preview = text_of(&user, "#preview").await;
    assert!(preview.contains("x1") && preview.contains("left"), "{preview}");
    snap(&user, "03-builder-preview").await;
    // A model described by pasting its description, registered on the ledger by the console.
    fill_and_send(&user, "#model-form", &[("spec", SIDES_MODEL)]).await;
    // The quote before any escrow: for two epochs.
    let first_quote = text_of(&user, "#quote-amount").await;
    fill_and_send(&user, "form[action='/builder'][method='get']", &[("epochs", "2")]).await;
    let quote = text_of(&user, "#quote-amount").await;
    assert!(
        !quote.is_empty() && quote != first_quote,
        "{first_quote} → {quote}"
    );
    snap(&user, "04-builder-quote").await;
    let balance_before = balance(&user, &base).await;
    click(&user, "#train").await;

    // The job's page: progress pushed over server-sent events until it is done.
    let job_url = user.current_url().await.unwrap().to_string();
    if !job_url.contains("/jobs/") {
        let page = user
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        panic!("training did not start ({job_url}): {page}");
    }
    user.wait()
        .at_most(JOB_WAIT)
        .for_element(Locator::XPath("//b[@id='job-state' and text()='done']"))
        .await
        .expect("the job finishes, its page told so without a reload");
    assert!(text_of(&user, "#job-accuracy").await.contains('%'));
    user.find(Locator::Css("#curve svg"))
        .await
        .expect("the training curve");
    // Held-out accuracy after every round (the builder's default), one mark an evaluation:
    // two epochs are at least two rounds.
    let held_out = user
        .find_all(Locator::Css("#held-out-curve svg circle"))
        .await
        .expect("the held-out accuracy curve");
    assert!(held_out.len() >= 2, "{} evaluations plotted", held_out.len());
    assert!(text_of(&user, "#tasks").await.contains("compute-"));
    snap(&user, "05-job-done").await;
    // Reloaded, the ledger's record: settled, with its trained model and the lineage graph.
    user.goto(&job_url).await.unwrap();
    assert_eq!(text_of(&user, "#outcome").await, "settled");
    user.find(Locator::Css("#lineage-graph svg"))
        .await
        .expect("the lineage graph");
    snap(&user, "06-job-lineage").await;
    click(&user, "#trained-model").await;
    let card = user.current_url().await.unwrap().to_string();
    assert!(text_of(&user, "#lineage").await.contains("sides"));

    // Publish it for inference, list it for sale.
    let alias = format!("builder-{}", &job_url.rsplit('/').next().unwrap()[..8]);
    fill_and_send(&user, "#publish-form", &[("price", "0.5"), ("alias", &alias)]).await;
    assert!(text_of(&user, "#notice").await.contains("Published"));
    let snippet = text_of(&user, "#snippet").await;
    fill_and_send(&user, "#list-form", &[("price", "3")]).await;
    assert!(text_of(&user, "#notice").await.contains("Listed"));
    assert_eq!(text_of(&user, "#price").await, "3 AIC");
    snap(&user, "07-trained-model-card").await;

    // The dataset's page names the job that paid for it.
    user.goto(&format!("{base}/assets/{dataset}")).await.unwrap();
    let job_id = job_url.rsplit('/').next().unwrap();
    let usage = user
        .find(Locator::Css(&format!("#usage a[href='/jobs/{job_id}']")))
        .await;
    assert!(usage.is_ok(), "the dataset's usage lists job {job_id}");
    assert!(text_of(&user, "#holdings").await.contains("storage-"));
    snap(&user, "08-dataset").await;
    // Every job that used it, paged from the ledger: this one first.
    click(&user, "#all-usage").await;
    assert!(text_of(&user, "#asset-filter").await.contains(&dataset));
    let newest = element(&user, "#jobs tbody tr a").await;
    assert_eq!(
        newest.attr("href").await.unwrap().as_deref(),
        Some(format!("/jobs/{job_id}").as_str())
    );
    assert!(
        balance(&user, &base).await < balance_before,
        "the job was paid for"
    );

    // A second user buys it from their own console, in their own browser session.
    let caller = data_dir.join("wallets/caller.key");
    let (mut console, buyer_url) = second_console(data_dir, &caller);
    let buyer = browser(driver).await;
    buyer.goto(&buyer_url).await.unwrap();
    click(&buyer, "nav a[href='/market']").await;
    let card_path = card.trim_start_matches(&base).to_string();
    click(&buyer, &format!("a[href='{card_path}']")).await;
    click(&buyer, "#buy-form button").await;
    assert!(text_of(&buyer, "#notice").await.contains("Bought"));
    snap(&buyer, "09-bought").await;
    let buyer_address = {
        buyer
            .goto(&format!("{}/wallet", buyer_url.split("/?").next().unwrap()))
            .await
            .unwrap();
        text_of(&buyer, "#address").await
    };
    user.goto(&card).await.unwrap();
    assert_eq!(
        text_of(&user, "#owner").await,
        buyer_address,
        "the model is the buyer's"
    );
    buyer.close().await.unwrap();
    let _ = console.kill();
    let _ = console.wait();

    // The call the page gave, pasted into a shell with a real API key: answered.
    let api_key = std::fs::read_to_string(data_dir.join("gateway-api-key")).unwrap();
    let script = snippet.replace(
        "export AIC_API_KEY=aic_...",
        &format!("export AIC_API_KEY={}", api_key.trim()),
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -e\n{script}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"outputs\""), "{stdout}");

    // The chain: the blocks that hold all of it, verified in the console's own process.
    click(&user, "nav a[href='/chain']").await;
    let blocks = text_of(&user, "#blocks").await;
    assert!(blocks.lines().count() > 5, "{blocks}");
    snap(&user, "10-chain").await;
    click(&user, "a[href='/chain/verify']").await;
    assert!(text_of(&user, "#verdict").await.contains("blocks verify"));
    user.close().await.unwrap();
}

/// The wallet page's balance, in AIC.
async fn balance(client: &Client, base: &str) -> f64 {
    let back = client.current_url().await.unwrap().to_string();
    client.goto(&format!("{base}/wallet")).await.unwrap();
    let text = text_of(client, "#balance").await;
    client.goto(&back).await.unwrap();
    text.trim_end_matches(" AIC").parse().unwrap()
}

/// A model for the walk's dataset: four numbers in, two classes out.
const SIDES_MODEL: &str = r#"name = "sides-mlp"
input = { features = 4 }
loss = "softmax_cross_entropy"

[[layer]]
kind = "dense"
units = 16

[[layer]]
kind = "relu"

[[layer]]
name = "logits"
kind = "dense"
units = 2

[training]
optimizer = "adam"
learning_rate = 0.02
epochs = 10
batch_size = 32
local_steps = 4
"#;

/// Rows of four numbers and which side of a line the first two put them on: a dataset a user
/// might bring, made up here so the test needs no download.
fn sides_csv(rows: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    let mut csv = String::from("x1,x2,x3,x4,side\n");
    for _ in 0..rows {
        let x: [f64; 4] = [next(), next(), next(), next()];
        let side = if x[0] + 0.5 * x[1] > 0.0 { "left" } else { "right" };
        csv.push_str(&format!(
            "{:.4},{:.4},{:.4},{:.4},{side}\n",
            x[0], x[1], x[2], x[3]
        ));
    }
    csv
}
