//! What every form carries: a CSRF token this console signed (it expires), so no other site can
//! make the user's browser post here, and an idempotency key, so a form sent twice — a double
//! click, a reload — acts once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a rendered form may be sent.
pub const DEFAULT_FORM_LIFETIME: Duration = Duration::from_secs(3600);
/// Outcomes of sent forms remembered, oldest forgotten first.
const REMEMBERED: usize = 4096;

/// A form's hidden fields.
#[derive(Clone, Debug)]
pub struct FormToken {
    pub csrf: String,
    pub idempotency: String,
}

/// Why a form was refused before anything was read from it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrfRefusal {
    #[error("the form carried no CSRF token; reload the page and send it again")]
    Missing,
    #[error("the form's CSRF token was not issued by this console; reload the page and send it again")]
    Forged,
    #[error("the form expired (it was rendered over {0} s ago); reload the page and send it again")]
    Expired(u64),
}

/// Where a form with this idempotency key stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Not seen before: act on it.
    First,
    /// The same form is being acted on now.
    InFlight,
    /// Acted on already; its result is at this page.
    Done(String),
}

#[derive(Clone)]
enum Outcome {
    InFlight,
    Done(String),
}

/// The console's form secret and the outcomes of forms sent.
pub struct Forms {
    secret: [u8; 32],
    lifetime: Duration,
    outcomes: std::sync::Mutex<(HashMap<String, Outcome>, VecDeque<String>)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Field name → what is wrong with it, shown beside the field.
pub type FieldErrors = BTreeMap<String, String>;

impl Forms {
    pub fn new(lifetime: Duration) -> Self {
        Forms {
            secret: rand::random(),
            lifetime,
            outcomes: std::sync::Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn signature(&self, issued: u64) -> String {
        let mac = blake3::keyed_hash(&self.secret, format!("aic-plaza-csrf {issued}").as_bytes());
        hex::encode(mac.as_bytes())
    }

    /// Hidden fields for a form rendered now.
    pub fn issue(&self) -> FormToken {
        let issued = now_secs();
        FormToken {
            csrf: format!("{issued}.{}", self.signature(issued)),
            idempotency: hex::encode(rand::random::<[u8; 16]>()),
        }
    }

    /// Whether a sent form's CSRF token is this console's and still fresh.
    pub fn check_csrf(&self, token: Option<&str>) -> Result<(), CsrfRefusal> {
        let token = token.filter(|t| !t.is_empty()).ok_or(CsrfRefusal::Missing)?;
        let (issued, signature) = token.split_once('.').ok_or(CsrfRefusal::Forged)?;
        let issued: u64 = issued.parse().map_err(|_| CsrfRefusal::Forged)?;
        // Compared as keyed hashes of each side, so the time taken says nothing of the secret.
        let expected = self.signature(issued);
        if blake3::hash(expected.as_bytes()) != blake3::hash(signature.as_bytes()) {
            return Err(CsrfRefusal::Forged);
        }
        let age = now_secs().saturating_sub(issued);
        if age >= self.lifetime.as_secs() {
            return Err(CsrfRefusal::Expired(self.lifetime.as_secs()));
        }
        Ok(())
    }

    /// Claims an idempotency key for acting on its form.
    pub fn begin(&self, key: &str) -> Attempt {
        let mut guard = self.outcomes.lock().expect("outcomes");
        let (outcomes, order) = &mut *guard;
        match outcomes.get(key) {
            Some(Outcome::InFlight) => Attempt::InFlight,
            Some(Outcome::Done(page)) => Attempt::Done(page.clone()),
            None => {
                outcomes.insert(key.to_string(), Outcome::InFlight);
                order.push_back(key.to_string());
                while order.len() > REMEMBERED {
                    if let Some(old) = order.pop_front() {
                        outcomes.remove(&old);
                    }
                }
                Attempt::First
            }
        }
    }

    /// The form acted; a second send of it goes to `page`.
    pub fn finish(&self, key: &str, page: &str) {
        if let Some(outcome) = self.outcomes.lock().expect("outcomes").0.get_mut(key) {
            *outcome = Outcome::Done(page.to_string());
        }
    }

    /// The form did not act (it was invalid or refused): it may be corrected and sent again.
    pub fn release(&self, key: &str) {
        self.outcomes.lock().expect("outcomes").0.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_until_it_expires_and_only_if_signed_here() {
        let forms = Forms::new(DEFAULT_FORM_LIFETIME);
        let token = forms.issue();
        assert_eq!(forms.check_csrf(Some(&token.csrf)), Ok(()));
        assert_eq!(forms.check_csrf(None), Err(CsrfRefusal::Missing));
        assert_eq!(forms.check_csrf(Some("")), Err(CsrfRefusal::Missing));
        assert_eq!(forms.check_csrf(Some("12.abcd")), Err(CsrfRefusal::Forged));
        // Another console's token, or one with its time moved on, is forged.
        let other = Forms::new(DEFAULT_FORM_LIFETIME).issue();
        assert_eq!(forms.check_csrf(Some(&other.csrf)), Err(CsrfRefusal::Forged));
        let (issued, signature) = token.csrf.split_once('.').unwrap();
        let later = format!("{}.{signature}", issued.parse::<u64>().unwrap() + 1);
        assert_eq!(forms.check_csrf(Some(&later)), Err(CsrfRefusal::Forged));
        // A form of a console whose forms live no time at all has expired at once.
        let instant = Forms::new(Duration::ZERO);
        let token = instant.issue();
        assert_eq!(
            instant.check_csrf(Some(&token.csrf)),
            Err(CsrfRefusal::Expired(0))
        );
    }

    #[test]
    fn a_form_acts_once_and_a_refused_one_may_be_sent_again() {
        let forms = Forms::new(DEFAULT_FORM_LIFETIME);
        assert_eq!(forms.begin("k"), Attempt::First);
        assert_eq!(forms.begin("k"), Attempt::InFlight);
        forms.finish("k", "/wallet");
        assert_eq!(forms.begin("k"), Attempt::Done("/wallet".into()));
        assert_eq!(forms.begin("j"), Attempt::First);
        forms.release("j");
        assert_eq!(forms.begin("j"), Attempt::First);
    }
}
