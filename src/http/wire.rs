//! Request bodies read as their schema says: an object only from a JSON
//! object. A leaf module, so that the pure request types (enrollment,
//! telephony) need nothing of the HTTP layer.

use serde::Deserialize;

/// A `T` read from a JSON object only. serde's derived structs also take
/// an array of their fields in order (`"context": [null, null]`), which no
/// schema of the API admits.
pub struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnlyMap<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for OnlyMap<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(OnlyMap(std::marker::PhantomData))
            .map(Object)
    }
}

/// `#[serde(deserialize_with = "crate::http::wire::object")]`: a struct
/// field given as a JSON object only.
pub fn object<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Object::deserialize(d).map(|Object(v)| v)
}

/// [`object`] for an `Option`: an object or null.
pub fn optional_object<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Option::<Object<T>>::deserialize(d).map(|o| o.map(|Object(v)| v))
}

/// [`object`] for a list: every item an object.
pub fn objects<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Vec::<Object<T>>::deserialize(d).map(|v| v.into_iter().map(|Object(t)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    struct User {
        id: String,
        login: String,
    }

    #[derive(Deserialize, Debug)]
    struct Request {
        #[serde(deserialize_with = "object")]
        #[allow(dead_code)]
        user: User,
    }

    #[test]
    fn an_object_is_read_only_from_a_json_object() {
        let ok: Request = serde_json::from_str(r#"{"user": {"id": "u1", "login": "l"}}"#).unwrap();
        assert_eq!(ok.user.id, "u1");
        // serde's derive alone would take the fields in order from an array.
        assert!(serde_json::from_str::<User>(r#"["u1", "l"]"#).is_ok());
        let err = serde_json::from_str::<Request>(r#"{"user": ["u1", "l"]}"#).unwrap_err();
        assert!(err.to_string().contains("an object"), "{err}");
    }
}
