//! What a request's body fills: the whole request message (`body: "*"`)
//! or one repeated field of it (`body: "decisions"`, as grpc-gateway
//! reads a field body), from JSON sent as is or gzipped
//! (`Content-Encoding: gzip`, as OPA sends its decision logs).

use std::fmt;
use std::io::Read;

use http::{HeaderMap, StatusCode, header};
use prost::bytes::Bytes;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    Value,
};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use tonic::Status;

use super::status::Failure;

/// What the HTTP body of a route fills.
#[derive(Debug, Clone)]
pub enum Body {
    /// Nothing: the query string fills the request.
    None,
    /// The whole request message.
    Whole,
    /// One repeated message field of it, from a JSON array.
    Field(FieldDescriptor),
}

impl Body {
    /// The body `rule` (the option's `body`) names for requests of `input`;
    /// `None` for a field that is not a repeated message, which no proto of
    /// this server declares.
    pub fn of(rule: Option<&str>, input: &MessageDescriptor) -> Option<Self> {
        match rule {
            None => Some(Body::None),
            Some("*") => Some(Body::Whole),
            Some(name) => input
                .get_field_by_name(name)
                .filter(|field| field.is_list() && matches!(field.kind(), Kind::Message(_)))
                .map(Body::Field),
        }
    }

    /// Fills `message` from the JSON `body`; fields of `message`'s type it
    /// does not declare are refused when `strict`.
    pub fn fill(
        &self,
        message: &mut DynamicMessage,
        body: &[u8],
        strict: bool,
    ) -> Result<(), Status> {
        let options = DeserializeOptions::new().deny_unknown_fields(strict);
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let invalid = |error: serde_json::Error, what: &str| {
            Status::invalid_argument(format!("the body is not a valid {what}: {error}"))
        };
        match self {
            Body::None => Ok(()),
            Body::Whole => {
                let descriptor = message.descriptor();
                *message = DynamicMessage::deserialize_with_options(
                    descriptor.clone(),
                    &mut deserializer,
                    &options,
                )
                .and_then(|filled| deserializer.end().map(|()| filled))
                .map_err(|error| invalid(error, descriptor.name()))?;
                Ok(())
            }
            Body::Field(field) => {
                let Kind::Message(descriptor) = field.kind() else {
                    return Err(Status::internal("a field body is a repeated message"));
                };
                let what = format!("array of {}", descriptor.name());
                let items = Messages {
                    descriptor: &descriptor,
                    options: &options,
                }
                .deserialize(&mut deserializer)
                .and_then(|items| deserializer.end().map(|()| items))
                .map_err(|error| invalid(error, &what))?;
                message.set_field(
                    field,
                    Value::List(items.into_iter().map(Value::Message).collect()),
                );
                Ok(())
            }
        }
    }
}

/// A JSON array of messages of one type.
struct Messages<'a> {
    descriptor: &'a MessageDescriptor,
    options: &'a DeserializeOptions,
}

impl<'de> DeserializeSeed<'de> for Messages<'_> {
    type Value = Vec<DynamicMessage>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Messages<'_> {
    type Value = Vec<DynamicMessage>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "an array of {}", self.descriptor.name())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let mut messages = Vec::new();
        while let Some(message) = items.next_element_seed(OneMessage {
            descriptor: self.descriptor,
            options: self.options,
        })? {
            messages.push(message);
        }
        Ok(messages)
    }
}

/// One message of [`Messages`].
struct OneMessage<'a> {
    descriptor: &'a MessageDescriptor,
    options: &'a DeserializeOptions,
}

impl<'de> DeserializeSeed<'de> for OneMessage<'_> {
    type Value = DynamicMessage;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        DynamicMessage::deserialize_with_options(
            self.descriptor.clone(),
            deserializer,
            self.options,
        )
    }
}

/// The body as sent, or ungzipped when `Content-Encoding: gzip` says so:
/// at most `limit` bytes either way (a small gzip can hold a huge body).
pub fn decoded(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, Failure> {
    let Some(encoding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let encoding = encoding.to_str().unwrap_or_default().trim();
    if encoding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    if !encoding.eq_ignore_ascii_case("gzip") {
        return Err(Failure::http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::invalid_argument(format!(
                "Content-Encoding {encoding:?} is not one this server decodes: send gzip or none"
            )),
        ));
    }
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|error| {
            Status::invalid_argument(format!("the body is not valid gzip: {error}"))
        })?;
    if decoded.len() > limit {
        return Err(crate::grpc::status::too_large(format!(
            "the request body exceeds {limit} bytes once decompressed"
        ))
        .into());
    }
    Ok(decoded.into())
}
