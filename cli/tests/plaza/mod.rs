//! The AI PLAZA console as a browser meets it over HTTP: the login token from the printed URL
//! becomes a cookie; without it every page is refused; pages render what the ledger and the
//! scheduler say, with the asset names a user chose escaped.

pub mod browser;

use serde_json::Value;

/// A logged-in browser session: the cookie the console set for the token in its URL.
pub struct Console {
    client: reqwest::blocking::Client,
    base: String,
    cookie: String,
}

impl Console {
    /// Opens the URL the devnet printed, as a browser would: 303 to the page, with the cookie.
    pub fn open(status: &Value) -> Self {
        let url = status["plaza"]["url"]
            .as_str()
            .expect("the devnet reports its console");
        aic_protocol::install_crypto_provider();
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = client.get(url).send().unwrap();
        assert_eq!(
            response.status().as_u16(),
            303,
            "the token is exchanged for a cookie"
        );
        let cookie = response
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(!response.headers()["location"].to_str().unwrap().contains("token"));
        let base = url.split("/?").next().unwrap().to_string();
        Console {
            client,
            base,
            cookie: cookie.split(';').next().unwrap().to_string(),
        }
    }

    /// A page's status and HTML.
    pub fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }

    /// A form sent as a browser sends it: status and where it leads (or the page).
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .unwrap();
        let code = response.status().as_u16();
        match response.headers().get("location") {
            Some(location) => (code, location.to_str().unwrap().to_string()),
            None => (code, response.text().unwrap()),
        }
    }

    /// The same page without the cookie: another local user's browser, or a stranger's link.
    pub fn get_without_login(&self, path: &str) -> (u16, String) {
        let response = self.client.get(format!("{}{path}", self.base)).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }
}

/// Every page of the console against the running devnet.
pub fn check_the_console(console: &Console, status: &Value, data_dir: &std::path::Path) {
    let (code, page) = console.get_without_login("/");
    assert_eq!(code, 401, "{page}");
    assert!(page.contains("login token"), "{page}");
    let (code, _) = console.get_without_login("/?token=not-the-token");
    assert_eq!(code, 401);

    let (code, network) = console.get("/");
    assert_eq!(code, 200, "{network}");
    for name in ["scheduler-1", "storage-1", "compute-1", "compute-3"] {
        assert!(network.contains(&format!("<td>{name}</td>")), "{name}: {network}");
    }
    let chain_id = status["ledger"]["chain_id"].as_str().unwrap();
    assert!(network.contains(chain_id), "{network}");

    let trained = status["job"]["trained_model"].as_str().unwrap();
    let (code, card) = console.get(&format!("/assets/{trained}"));
    assert_eq!(code, 200, "{card}");
    assert!(card.contains("trained by job"), "{card}");

    // Its card says where it came from, as the ledger's manifest records it.
    let dataset = status["datasets"][0]["asset"].as_str().unwrap();
    assert!(
        card.contains("<dd id=\"lineage\">") && card.contains(&format!("href=\"/assets/{dataset}\"")),
        "{card}"
    );
    let (code, models) = console.get("/models");
    assert_eq!(code, 200);
    assert!(
        models.contains(&format!("href=\"/assets/{trained}\"")),
        "{models}"
    );
    let accuracy = status["job"]["accuracy"].as_f64().unwrap();
    assert!(models.contains(&format!("{:.1} %", accuracy * 100.0)), "{models}");
    let (code, network) = console.get("/");
    assert_eq!(code, 200);
    assert!(
        network.contains("<figure class=\"plot\" id=\"speeds\"><svg"),
        "{network}"
    );
    // Search: every word must match the name, label, a column or a class.
    let (_, found) = console.get("/datasets?q=DIGIT+pixel_0_0");
    assert!(found.contains(&format!("href=\"/assets/{dataset}\"")), "{found}");
    let (_, none) = console.get("/datasets?q=digit+no-such-column");
    assert!(
        none.contains("id=\"no-match\"") && !none.contains(&format!("/assets/{dataset}")),
        "{none}"
    );
    let (code, datasets) = console.get("/datasets");
    assert_eq!(code, 200);
    assert!(
        datasets.contains(&format!("href=\"/assets/{dataset}\"")) && datasets.contains("<td>digit</td>"),
        "{datasets}"
    );

    // The devnet's console shows the user's wallet, as `aic wallet balance` does.
    let user = data_dir.join("wallets/user.key");
    let balance = super::aic(&[
        "wallet",
        "balance",
        "--profile",
        status["profile"].as_str().unwrap(),
        "--wallet",
        user.to_str().unwrap(),
        "--json",
    ]);
    let balance: Value = serde_json::from_slice(&balance.stdout).unwrap();
    let (code, wallet) = console.get("/wallet");
    assert_eq!(code, 200);
    assert!(
        wallet.contains(&format!(
            "<code id=\"address\">{}</code>",
            balance["address"].as_str().unwrap()
        )),
        "{wallet}"
    );
    assert!(
        wallet.contains(&format!(
            "<b id=\"balance\">{} AIC</b>",
            balance["account"]["balance"].as_str().unwrap()
        )),
        "{balance} {wallet}"
    );
    assert!(
        wallet.contains(&format!("href=\"/assets/{trained}\"")),
        "the payer owns the trained model"
    );
    // The trained model's card: the work behind it, from the ledger's job log — as many
    // agreed spot checks as the runner's report lists, and the compute nodes by name.
    let (code, card) = console.get(&format!("/assets/{trained}"));
    assert_eq!(code, 200);
    assert!(card.contains("id=\"card-lineage\""), "{card}");
    let agreed = status["job"]["spot_checks"]
        .as_array()
        .expect("the report lists its spot checks")
        .iter()
        .filter(|c| c["verdict"] == "agreed")
        .count();
    assert!(agreed > 0, "new nodes are always checked: {}", status["job"]);
    assert!(
        card.contains(&format!("settled: {agreed} agreed, 0 caught a wrong result.</p>")),
        "{card}"
    );
    assert!(card.contains("<td>compute-1</td>"), "{card}");

    let (code, missing) = console.get("/assets/00000000000000000000000000000000");
    assert_eq!(code, 404, "an unknown asset is a 404 page: {missing}");
    assert!(missing.contains("No such asset"));
    assert_eq!(console.get("/assets/not-an-id").0, 404);
    assert_eq!(console.get("/no/such/page").0, 404);

    let (code, chain) = console.get("/chain");
    assert_eq!(code, 200);
    assert!(chain.contains("<table id=\"blocks\">"), "{chain}");
    let (code, verified) = console.get("/chain/verify");
    assert_eq!(code, 200);
    assert!(
        verified.contains("<p id=\"verdict\" class=\"ok\">All "),
        "the console checks the chain itself: {verified}"
    );
    let (code, css) = console.get("/plaza.css");
    assert_eq!(code, 200);
    assert!(css.contains("AI PLAZA"));

    // A form sent twice (a double click) acts once: the second send is led to the first's page.
    let dir = tempfile::tempdir().unwrap();
    let recipient = dir.path().join("recipient.key");
    let recipient = recipient.to_str().unwrap();
    assert!(super::aic(&["wallet", "new", "--wallet", recipient])
        .status
        .success());
    let address = super::aic(&["wallet", "address", "--wallet", recipient]);
    let address = String::from_utf8(address.stdout).unwrap();
    let fields = |page: &str, name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = page.find(&marker).unwrap() + marker.len();
        page[start..].split('"').next().unwrap().to_string()
    };
    let (csrf, key) = (fields(&wallet, "csrf"), fields(&wallet, "idempotency"));
    let form = [
        ("csrf", csrf.as_str()),
        ("idempotency", key.as_str()),
        ("to", address.trim()),
        ("amount", "0.25"),
    ];
    assert_eq!(
        console.post("/wallet/transfer", &form),
        (303, "/wallet?done=sent".into())
    );
    assert_eq!(
        console.post("/wallet/transfer", &form),
        (303, "/wallet?done=sent".into())
    );
    let received = super::aic(&[
        "wallet",
        "balance",
        "--profile",
        status["profile"].as_str().unwrap(),
        "--wallet",
        recipient,
        "--json",
    ]);
    let received: Value = serde_json::from_slice(&received.stdout).unwrap();
    assert_eq!(received["account"]["balance"], "0.25", "sent once: {received}");

    // The builder's templates: one registered (or found registered) for the digits, then quoted.
    let (_, builder) = console.get(&format!("/builder?dataset={dataset}"));
    let (code, location) = console.post(
        "/builder/model",
        &[
            ("csrf", fields(&builder, "csrf").as_str()),
            ("idempotency", fields(&builder, "idempotency").as_str()),
            ("dataset", dataset),
            ("template", "digits-mlp"),
        ],
    );
    assert_eq!(code, 303, "{location}");
    assert!(
        location.starts_with(&format!("/builder?dataset={dataset}&model=")),
        "{location}"
    );
    let (code, quoted) = console.get(&location);
    assert_eq!(code, 200, "{quoted}");
    assert!(quoted.contains("id=\"quote-amount\""), "{quoted}");
    let (code, page) = console.get("/wallet?done=sent");
    assert_eq!(code, 200);
    assert!(
        page.contains("<p class=\"notice\" id=\"notice\">Sent.</p>"),
        "{page}"
    );
}

/// A job whose scheduler replica (the Raft leader the console read through) was killed mid-job:
/// its page and the history still show it, from the ledger's job log and the replica that
/// resumed it.
pub fn check_a_job_after_its_leader_died(console: &Console, job: &Value) {
    let id = job["id"].as_str().unwrap();
    let (code, page) = console.get(&format!("/jobs/{id}"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<dd id=\"outcome\">settled</dd>"), "{page}");
    assert!(page.contains("rounds checkpointed</dt><dd>60 ("), "{page}");
    assert!(
        page.contains("taken over by another replica"),
        "the takeover is on the ledger: {page}"
    );
    assert!(page.contains("id=\"trained-model\""), "{page}");
    assert!(page.contains("id=\"lineage-graph\""), "{page}");
    let (code, history) = console.get("/jobs");
    assert_eq!(code, 200, "{history}");
    assert!(history.contains(&format!("href=\"/jobs/{id}\"")), "{history}");
}
