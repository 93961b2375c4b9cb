//! Fixed-size ids and hashes as hex text in human-readable formats (JSON, TOML) and as raw bytes
//! in binary ones (postcard frames, the ledger's state, whose encoding this leaves unchanged).
//! Reading JSON also takes the older array of numbers, so files written before still load.
//!
//! Used as `#[serde(with = "aic_protocol::hex_serde")]` on a `[u8; N]` field.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.collect_str(&hex::encode(bytes))
    } else {
        // As serde writes an array: a tuple of N bytes.
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(deserializer: D) -> Result<[u8; N], D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_any(HexOrBytes::<N>)
    } else {
        deserializer.deserialize_tuple(N, HexOrBytes::<N>)
    }
}

struct HexOrBytes<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for HexOrBytes<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hex digits or {N} bytes", 2 * N)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<[u8; N], E> {
        let mut bytes = [0u8; N];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))?;
        Ok(bytes)
    }

    fn visit_bytes<E: de::Error>(self, given: &[u8]) -> Result<[u8; N], E> {
        given
            .try_into()
            .map_err(|_| E::invalid_length(given.len(), &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
        let mut bytes = [0u8; N];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(N + 1, &self));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hashed(#[serde(with = "super")] [u8; 4]);

    #[test]
    fn hex_in_json_bytes_in_postcard_and_old_arrays_still_read() {
        let value = Hashed([0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(serde_json::to_string(&value).unwrap(), "\"deadbeef\"");
        assert_eq!(serde_json::from_str::<Hashed>("\"deadbeef\"").unwrap(), value);
        assert_eq!(
            serde_json::from_str::<Hashed>("[222,173,190,239]").unwrap(),
            value
        );
        // The binary encoding is serde's for an array: unchanged.
        let array: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
        assert_eq!(
            postcard::to_stdvec(&value).unwrap(),
            postcard::to_stdvec(&array).unwrap()
        );
        assert_eq!(
            postcard::from_bytes::<Hashed>(&postcard::to_stdvec(&array).unwrap()).unwrap(),
            value
        );
        for bad in ["\"deadbe\"", "\"zzzzzzzz\"", "[1,2,3]", "[1,2,3,4,5]"] {
            assert!(serde_json::from_str::<Hashed>(bad).is_err(), "{bad}");
        }
    }
}
