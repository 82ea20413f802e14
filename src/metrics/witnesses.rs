//! The witnessing's metrics: checkpoint submissions to each witness.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};

use super::Registrar;

/// Labels of a submission count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmissionLabels {
    /// The witness's name (`audit.witnesses[].name`, else its key's).
    pub witness: String,
    /// `cosigned`, `unreachable` (no answer in time, or a transport
    /// error), `refused` (an answer other than a cosignature), or
    /// `invalid` (a cosignature that does not verify with its key).
    pub outcome: String,
}

/// What the witnessing feeds.
#[derive(Debug, Clone, Default)]
pub struct WitnessInstruments {
    /// Submissions of a checkpoint, by witness and outcome.
    pub submissions: Family<SubmissionLabels, Counter>,
}

impl WitnessInstruments {
    /// The count of `witness`'s submissions ending with `outcome`.
    pub fn submission(&self, witness: &str, outcome: &str) -> Counter {
        self.submissions
            .get_or_create(&SubmissionLabels {
                witness: witness.to_owned(),
                outcome: outcome.to_owned(),
            })
            .clone()
    }
}

/// Registers them under their names.
pub(super) fn register_witnesses(registry: &mut Registrar<'_>, instruments: &WitnessInstruments) {
    registry.register(
        "witness_submissions",
        "Checkpoint submissions to witnesses, by witness and outcome: cosigned, unreachable, refused or invalid",
        instruments.submissions.clone(),
    );
}
