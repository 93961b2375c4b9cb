//! Typed identifiers: a node is named by the hash of its public key, everything else by
//! random or content-derived 128/256-bit ids, so two kinds of id can never be mixed up. Each is
//! hex text in JSON and raw bytes on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A node's identity: the BLAKE3 hash of the raw public key in its certificate.
///
/// Derived, never claimed: a peer computes it from the certificate it verified, so a node
/// cannot pretend to be another without that node's private key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(#[serde(with = "crate::hex_serde")] [u8; 32]);

impl NodeId {
    /// Derives the id from a raw public key (for Ed25519, its 32 bytes).
    pub fn from_public_key(public_key: &[u8]) -> Self {
        NodeId(*blake3::hash(public_key).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits: enough to tell nodes apart in a table or a log line.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::InvalidId {
            kind: "node id",
            value: s.to_string(),
        })?;
        Ok(NodeId(bytes))
    }
}

/// Declares a 128-bit id type with hex display and parsing.
macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(#[serde(with = "crate::hex_serde")] [u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                $name(rand::random())
            }

            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(&self.0[..6]))
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                let mut bytes = [0u8; 16];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::InvalidId {
                    kind: $kind,
                    value: s.to_string(),
                })?;
                Ok($name(bytes))
            }
        }
    };
}

id128!(
    /// A training job submitted by a user.
    JobId,
    "job id"
);
id128!(
    /// One unit of work of a job: a shard in a round.
    TaskId,
    "task id"
);
id128!(
    /// An ERC721 asset on the ledger (Dataset, Model, TrainedModel).
    AssetId,
    "asset id"
);

/// A dataset shard, named by the BLAKE3 hash of its plaintext Parquet bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(#[serde(with = "crate::hex_serde")] [u8; 32]);

impl ShardId {
    pub fn of_content(content: &[u8]) -> Self {
        ShardId(*blake3::hash(content).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for ShardId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::InvalidId {
            kind: "shard id",
            value: s.to_string(),
        })?;
        Ok(ShardId(bytes))
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardId({})", hex::encode(&self.0[..6]))
    }
}

/// What a certificate allows its holder to be. Written into the certificate by the cluster CA
/// and checked by servers on every RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Scheduler,
    Storage,
    Compute,
    Client,
    /// A cluster operator: everything a client may do, plus the ledger's membership changes
    /// (adding, promoting and removing scheduler replicas). Issued with `aic ca issue --role
    /// operator` to the people who run the cluster, never to a node.
    Operator,
    /// An inference gateway: places published models' inference on compute nodes and settles
    /// the metered rows on the ledger. Issued with `aic ca issue --role gateway`.
    Gateway,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Scheduler,
        Role::Storage,
        Role::Compute,
        Role::Client,
        Role::Operator,
        Role::Gateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Storage => "storage",
            Role::Compute => "compute",
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| Error::InvalidId {
                kind: "role (scheduler|storage|compute|client|operator|gateway)",
                value: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_derived_from_the_key_and_round_trips_through_hex() {
        let a = NodeId::from_public_key(b"key a");
        let b = NodeId::from_public_key(b"key b");
        assert_ne!(a, b);
        assert_eq!(a, NodeId::from_public_key(b"key a"));
        assert_eq!(a.to_string().parse::<NodeId>().unwrap(), a);
        assert_eq!(a.short().len(), 12);
        assert!("zz".parse::<NodeId>().is_err());
    }

    #[test]
    fn ids_of_different_kinds_parse_only_their_own_length() {
        let job = JobId::random();
        assert_eq!(job.to_string().parse::<JobId>().unwrap(), job);
        let node = NodeId::from_public_key(b"k").to_string();
        assert!(node.parse::<JobId>().is_err(), "a 32-byte id is not a job id");
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
