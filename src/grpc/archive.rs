//! The archive format: JSON lines, each a `policyhub.v1.ArchiveRecord` in
//! the protobuf JSON mapping, a header first and a trailer last that counts
//! the records and holds the SHA-256 of every line before it, so an archive
//! cut short or altered is refused before anything of it is read.

use std::pin::Pin;
use std::sync::OnceLock;

use futures::Stream;
use tonic::Status;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use sha2::{Digest as _, Sha256};

use super::convert::{
    checkpoint, event, event_record, from_timestamp, json_to_struct, struct_to_json, timestamp,
    version,
};
use super::proto::{
    self, ArchiveHeader, ArchiveRecord, ArchiveTrailer, ArchivedKey as WireKey,
    ArchivedPolicy as WirePolicy, ArchivedRollout as WireRollout, ExportChunk, ImportChunk,
    archive_record::Record,
};
use super::rollouts::{measurement_record, measurements};
use crate::domain::archive::{Archive, ArchivedKey, ArchivedPolicy, ArchivedRollout, FORMAT};
use crate::domain::chain::Checkpoint;
use crate::domain::{
    Error, Label, Namespace, PolicyBody, PolicyRef, PolicySchema, Publication, Requirement, Result,
    VersionRecord, VersionState,
};
use crate::signing::Jwk;

/// Bytes per chunk, well below the default 4 MiB message limit of clients.
const CHUNK: usize = 256 * 1024;

/// The largest archive an import reads.
pub const MAX_ARCHIVE_BYTES: usize = 256 * 1024 * 1024;

/// The stream `Export` answers with.
pub type Chunks = Pin<Box<dyn Stream<Item = std::result::Result<ExportChunk, Status>> + Send>>;

/// `archive`'s bytes as export chunks.
pub fn chunks(archive: Vec<u8>) -> Chunks {
    let chunks: Vec<_> = archive
        .chunks(CHUNK)
        .map(|data| {
            Ok(ExportChunk {
                data: data.to_vec(),
            })
        })
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// The bytes of an import's stream, refused above [`MAX_ARCHIVE_BYTES`].
pub async fn receive(
    mut stream: tonic::Streaming<ImportChunk>,
) -> std::result::Result<Vec<u8>, Status> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if bytes.len() + chunk.data.len() > MAX_ARCHIVE_BYTES {
            return Err(Error::TooLarge(format!(
                "the archive is over the limit of {MAX_ARCHIVE_BYTES} bytes"
            ))
            .into());
        }
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

/// What the IMPORTED event says of `archive`, whose bytes hash to `sha256`.
pub fn source(archive: &Archive, sha256: &str) -> String {
    let namespaces: Vec<String> = archive
        .namespaces()
        .iter()
        .map(ToString::to_string)
        .collect();
    let exported_at = archive
        .exported_at
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    format!(
        "imported archive sha256:{sha256} of {}: {} policies, {} versions, {} events; exported \
         {exported_at} at revision {}, chain head {}",
        namespaces.join(", "),
        archive.policies.len(),
        archive.versions.len(),
        archive.events.len(),
        archive.revision,
        archive.chain_head
    )
}

fn descriptor() -> &'static MessageDescriptor {
    static RECORD: OnceLock<MessageDescriptor> = OnceLock::new();
    RECORD.get_or_init(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes")
            .get_message_by_name("policyhub.v1.ArchiveRecord")
            .expect("ArchiveRecord is in the descriptor set")
    })
}

/// Appends `record` as one line.
fn line(out: &mut Vec<u8>, record: Record) {
    let message = ArchiveRecord {
        record: Some(record),
    };
    let dynamic = DynamicMessage::decode(descriptor().clone(), message.encode_to_vec().as_slice())
        .expect("a record decodes as itself");
    serde_json::to_writer(&mut *out, &dynamic).expect("a record serializes");
    out.push(b'\n');
}

/// `archive` in the archive format.
pub fn encode(archive: &Archive) -> Vec<u8> {
    let mut out = Vec::new();
    line(
        &mut out,
        Record::Header(ArchiveHeader {
            format: FORMAT.into(),
            namespaces: archive.scope.iter().map(ToString::to_string).collect(),
            exported_at: archive.exported_at.map(timestamp),
            revision: archive.revision,
            chain_head: archive.chain_head.clone(),
            log_origin: archive.log_origin.clone(),
        }),
    );
    for key in &archive.keys {
        line(
            &mut out,
            Record::Key(WireKey {
                kid: key.jwk.kid.clone(),
                x: key.jwk.x.clone(),
                created_at: Some(timestamp(key.created_at)),
            }),
        );
    }
    for policy in &archive.policies {
        line(
            &mut out,
            Record::Policy(WirePolicy {
                namespace: policy.policy.namespace.to_string(),
                name: policy.policy.name.to_string(),
                schema: policy
                    .schema
                    .as_ref()
                    .map(|schema| json_to_struct(schema.value())),
                created_at: Some(timestamp(policy.created_at)),
                active_version: policy.active_version.unwrap_or(0),
            }),
        );
    }
    for record in &archive.versions {
        line(&mut out, Record::Version(version(record)));
    }
    for archived in &archive.rollouts {
        let spec = serde_json::to_value(&archived.rollout).expect("a rollout serializes");
        line(
            &mut out,
            Record::Rollout(WireRollout {
                namespace: archived.rollout.namespace.to_string(),
                id: archived.rollout.id.clone(),
                spec: Some(json_to_struct(&spec)),
                created_at: Some(timestamp(archived.created_at)),
                updated_at: Some(timestamp(archived.updated_at)),
                measurements: measurements(&archived.measurements),
            }),
        );
    }
    for record in &archive.events {
        line(&mut out, Record::Event(event(record)));
    }
    for record in &archive.checkpoints {
        line(&mut out, Record::Checkpoint(checkpoint(record)));
    }
    let records = 1
        + archive.keys.len()
        + archive.policies.len()
        + archive.versions.len()
        + archive.rollouts.len()
        + archive.events.len()
        + archive.checkpoints.len();
    let sha256 = format!("{:x}", Sha256::digest(&out));
    line(
        &mut out,
        Record::Trailer(ArchiveTrailer {
            records: records as u64,
            sha256,
        }),
    );
    out
}

/// Reads an archive; its contents and the SHA-256 of its bytes. Refuses,
/// naming the line, anything but a whole, unaltered archive of this format.
pub fn decode(bytes: &[u8]) -> Result<(Archive, String)> {
    let refused = |why: String| Error::invalid("archive", why);
    let whole = format!("{:x}", Sha256::digest(bytes));
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or_else(|| refused("it does not end with a whole line: it was cut short".into()))?;
    let (before, last) = match body.iter().rposition(|byte| *byte == b'\n') {
        Some(at) => (&bytes[..=at], &body[at + 1..]),
        None => (&bytes[..0], body),
    };
    let trailer = match parse(last) {
        Ok(Record::Trailer(trailer)) => trailer,
        _ => {
            return Err(refused(
                "its last line is not a trailer: it was cut short".into(),
            ));
        }
    };
    let lines: Vec<&[u8]> = before
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    if trailer.records != lines.len() as u64 {
        return Err(refused(format!(
            "the trailer counts {} records, the archive holds {}: it was cut or added to",
            trailer.records,
            lines.len()
        )));
    }
    let computed = format!("{:x}", Sha256::digest(before));
    if computed != trailer.sha256 {
        return Err(refused(format!(
            "its lines hash to {computed}, the trailer says {}: it was altered",
            trailer.sha256
        )));
    }
    let mut archive = Archive::default();
    for (index, text) in lines.iter().enumerate() {
        let number = index + 1;
        let at_line = |error: Error| refused(format!("line {number}: {error}"));
        let record = parse(text).map_err(|why| refused(format!("line {number}: {why}")))?;
        match (number, record) {
            (1, Record::Header(header)) => header_into(&mut archive, header).map_err(at_line)?,
            (1, _) => return Err(refused("line 1 is not an archive header".into())),
            (_, Record::Header(_) | Record::Trailer(_)) => {
                return Err(refused(format!(
                    "line {number}: a header or trailer inside"
                )));
            }
            (_, record) => add(&mut archive, record).map_err(at_line)?,
        }
    }
    Ok((archive, whole))
}

fn parse(text: &[u8]) -> std::result::Result<Record, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let dynamic = DynamicMessage::deserialize(descriptor().clone(), &mut deserializer)
        .map_err(|error| format!("not an ArchiveRecord: {error}"))?;
    ArchiveRecord::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|error| error.to_string())?
        .record
        .ok_or_else(|| "an empty record".to_owned())
}

fn header_into(archive: &mut Archive, header: ArchiveHeader) -> Result<()> {
    if header.format != FORMAT {
        return Err(Error::invalid(
            "format",
            format!("{:?} is not {FORMAT}", header.format),
        ));
    }
    archive.scope = header
        .namespaces
        .iter()
        .map(|namespace| Namespace::parse("namespaces", namespace))
        .collect::<Result<_>>()?;
    archive.exported_at = header
        .exported_at
        .map(|at| from_timestamp("exported_at", at))
        .transpose()?;
    archive.revision = header.revision;
    archive.chain_head = header.chain_head;
    archive.log_origin = header.log_origin;
    Ok(())
}

fn add(archive: &mut Archive, record: Record) -> Result<()> {
    match record {
        Record::Key(key) => archive.keys.push(ArchivedKey {
            jwk: Jwk::from_x(key.x),
            created_at: from_timestamp("created_at", key.created_at.unwrap_or_default())?,
        }),
        Record::Policy(policy) => archive.policies.push(ArchivedPolicy {
            policy: PolicyRef::parse(&policy.namespace, &policy.name)?,
            schema: policy
                .schema
                .map(|schema| PolicySchema::parse("schema", struct_to_json("schema", schema)?))
                .transpose()?,
            created_at: from_timestamp("created_at", policy.created_at.unwrap_or_default())?,
            active_version: (policy.active_version > 0).then_some(policy.active_version),
        }),
        Record::Version(version) => archive.versions.push(version_record(version)?),
        Record::Rollout(rollout) => {
            let spec = struct_to_json("spec", rollout.spec.unwrap_or_default())?;
            archive.rollouts.push(ArchivedRollout {
                rollout: serde_json::from_value(spec)
                    .map_err(|error| Error::invalid("spec", error.to_string()))?,
                created_at: from_timestamp("created_at", rollout.created_at.unwrap_or_default())?,
                updated_at: from_timestamp("updated_at", rollout.updated_at.unwrap_or_default())?,
                measurements: rollout
                    .measurements
                    .into_iter()
                    .map(measurement_record)
                    .collect::<Result<_>>()?,
            });
        }
        Record::Event(wire) => archive.events.push(event_record(&wire)?),
        Record::Checkpoint(wire) => archive.checkpoints.push(Checkpoint {
            id: archive.checkpoints.len() as u64 + 1,
            revision: wire.revision,
            last_event_id: wire.last_event_id,
            chain_head: wire.chain_head,
            at: from_timestamp("time", wire.time.unwrap_or_default())?,
            key_id: wire.key_id,
            jws: wire.jws,
            note: (!wire.note.is_empty()).then_some(wire.note),
        }),
        Record::Header(_) | Record::Trailer(_) => unreachable!("placed by decode"),
    }
    Ok(())
}

/// A version as an archive holds it.
fn version_record(wire: proto::Version) -> Result<VersionRecord> {
    let policy = PolicyRef::parse(&wire.namespace, &wire.name)?;
    let state: VersionState = proto::VersionState::try_from(wire.state)
        .map_err(|_| Error::invalid("state", format!("unknown state {}", wire.state)))?
        .as_str_name()
        .trim_start_matches("VERSION_STATE_")
        .parse()?;
    let body = PolicyBody::parse(
        "body",
        struct_to_json("body", wire.body.unwrap_or_default())?,
        usize::MAX,
    )?;
    if body.digest().to_string() != wire.digest {
        return Err(Error::invalid(
            "digest",
            format!(
                "{policy} version {}: the body's digest is {}, the archive says {}",
                wire.version,
                body.digest(),
                wire.digest
            ),
        ));
    }
    let publication = (!wire.jws.is_empty())
        .then(|| -> Result<Publication> {
            Ok(Publication {
                published_by: wire.published_by,
                published_at: from_timestamp(
                    "published_at",
                    wire.published_at.unwrap_or_default(),
                )?,
                jws: wire.jws,
                key_id: wire.key_id,
            })
        })
        .transpose()?;
    let requirements = Requirement::parse_all(
        &policy.namespace,
        wire.requirements
            .into_iter()
            .map(|requirement| (requirement.name, requirement.range)),
    )?;
    Ok(VersionRecord {
        label: (!wire.label.is_empty())
            .then(|| Label::parse("label", &wire.label))
            .transpose()?,
        version: wire.version,
        state,
        body,
        change_notes: wire.change_notes,
        created_by: wire.created_by,
        created_at: from_timestamp("created_at", wire.created_at.unwrap_or_default())?,
        publication,
        active: false,
        requirements,
        policy,
    })
}
