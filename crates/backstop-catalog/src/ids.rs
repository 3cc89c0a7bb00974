//! Identifiers in the style of the public API.

use rand::Rng;

const ID_LEN: usize = 20;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Returns a new random id: 20 lowercase letters and digits, starting with a
/// letter, as the public API's operation and resource ids look.
pub fn new_api_id() -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(ID_LEN);
    id.push(char::from(ALPHABET[rng.random_range(0..26)]));
    for _ in 1..ID_LEN {
        id.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_id_is_twenty_lowercase_alphanumerics() {
        for _ in 0..1000 {
            let id = new_api_id();
            assert_eq!(id.len(), 20);
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            assert!(id.as_bytes()[0].is_ascii_lowercase());
        }
    }
}
