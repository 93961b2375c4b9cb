//! The console's login: a random token in the URL printed at start, then a cookie. The cookie is
//! HTTP-only and same-site strict, so a page from another site cannot ride on it; the token is
//! compared by hash, so timing says nothing about it.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{http::StatusCode, HttpResponse};

/// The secret a browser proves it was given, and the cookie that carries it: named after the
/// console's port, since browsers share cookies between the ports of one host and two consoles
/// (a seller's and a buyer's) must not log each other out.
#[derive(Clone)]
pub struct LoginToken {
    secret: String,
    cookie: String,
    /// Served over HTTPS: the cookie is marked Secure.
    secure: bool,
}

impl LoginToken {
    pub fn generate(port: u16, secure: bool) -> Self {
        LoginToken {
            secret: hex::encode(rand::random::<[u8; 32]>()),
            cookie: format!("aic_plaza_{port}"),
            secure,
        }
    }

    pub fn text(&self) -> &str {
        &self.secret
    }

    fn matches(&self, offered: &str) -> bool {
        blake3::hash(offered.as_bytes()) == blake3::hash(self.secret.as_bytes())
    }
}

/// Lets a request through with the token (query or cookie); a token in the query sets the
/// cookie and redirects to the same page without it, so it does not linger in history.
pub async fn require_token(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let token = request
        .app_data::<actix_web::web::Data<crate::pages::State>>()
        .map(|state| state.token.clone())
        .expect("the console's state");
    let from_query = request
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(str::to_string);
    if let Some(offered) = from_query {
        if token.matches(&offered) {
            let cookie = Cookie::build(token.cookie.clone(), offered)
                .http_only(true)
                .same_site(SameSite::Strict)
                .secure(token.secure)
                .path("/")
                .finish();
            let response = HttpResponse::SeeOther()
                .insert_header(("location", request.path().to_string()))
                .cookie(cookie)
                .finish();
            return Ok(request.into_response(response));
        }
    } else if request
        .cookie(&token.cookie)
        .is_some_and(|cookie| token.matches(cookie.value()))
    {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    let page = crate::pages::error_page(
        StatusCode::UNAUTHORIZED,
        "Open the console with the address `aic plaza` (or `aic devnet`) printed: it carries the login token.",
    );
    Ok(request.into_response(page))
}
