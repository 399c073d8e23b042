//! A linearizability checker for client histories recorded against a key-value store.
//!
//! Fault-injection tests record what each client asked for and what it was told (a
//! [`History`], usually through a [`Recorder`]), then ask [`check`] whether some single order
//! of the operations explains every response while respecting real time: an operation that
//! completed before another was invoked must come first. Test binaries include this file with
//! `#[path = "support/linearizability.rs"] mod linearizability;`. It uses only `std`.
//!
//! # The model
//! Every key is an independent register holding a [`Value`] (`None` = absent); all keys start
//! at the same `initial` value. What each [`Op`] does and may answer:
//!
//! | op                       | [`Outcome::Ok`] carries      | takes effect when                  |
//! |--------------------------|------------------------------|------------------------------------|
//! | `Get`                    | `Response::Read(value)`      | the register holds `value`         |
//! | `Put(v)`                 | `Response::Written`          | always; the register becomes `v`   |
//! | `Delete`                 | `Response::Written`          | always; the register becomes absent|
//! | `Cas { expected, new }`  | `Response::CasResult(true)`  | the register holds `expected`; it becomes `new` (`None` deletes) |
//! | `Cas { expected, new }`  | `Response::CasResult(false)` | the register does *not* hold `expected`; no change |
//!
//! [`Outcome::Failed`] means the store definitely did not apply the operation (a rejection
//! before any proposal), so it is dropped. [`Outcome::Unknown`] means the client gave up
//! (timeout, lost connection, task cancelled): a `Get` is dropped, since it changes nothing; a
//! write may take effect once at any moment after its invocation, even after later operations
//! of the same client, or never. An unknown `Cas` either swapped or changed nothing, and
//! changing nothing is the same as never taking effect.
//!
//! # The algorithm
//! Keys are independent registers, so a history is linearizable iff each key's sub-history is
//! (P-compositionality); each key is searched on its own. The search is Wing & Gong's with
//! Lowe's improvements, as in porcupine: call and return entries sorted by time in a doubly
//! linked list; repeatedly place the first call the model accepts whose resulting
//! configuration (linearized set, register value) is new, lifting its entries out of the list;
//! reaching a return entry means that operation missed its deadline, so backtrack. Unknown
//! operations have no return entry, so they never force a backtrack, and the search succeeds
//! once every operation with a known response is placed. On failure, the explanation names the
//! operation at the furthest point the search could not get past and the operations that
//! constrain it.
//!
//! Three reductions keep unknown operations from making the search exponential, each exact:
//! - values that no operation reads or compares against are indistinguishable to the history
//!   and are treated as one value;
//! - an unknown operation is placed only directly before one that could not take effect
//!   without it (any linearization can be rearranged into that form, see
//!   `KeyHistory::placement`), and only when such an operation is placeable;
//! - unknown operations with the same effect are interchangeable, so the memo records how many
//!   of each were spent rather than which, and a configuration that spent no more of each than
//!   one already entered is not entered again.
//!
//! Configurations are memoized by a 128-bit Zobrist hash (fixed random keys XORed in as
//! operations come and go), so a step costs O(1) rather than hashing a bitset. A hash collision
//! could only make the search skip a configuration it has not explored, i.e. report a violation
//! that is not there, never accept a bad history; at 2^-128 per pair of configurations that is
//! not a practical concern. The search enters at most [`CheckOptions::max_states_per_key`]
//! configurations per key and then answers [`CheckResult::Inconclusive`] rather than run on:
//! many concurrent writes of equal values, or many unknown writes whose values are read, before
//! a violation can still be exponential.
//!
//! # Use
//! ```rust,ignore
//! let recorder = Arc::new(Recorder::new());
//! // In each client task; dropping the invocation without completing it records Unknown.
//! let invocation = recorder.invoke(client_id, b"k".to_vec(), Op::Put(b"v1".to_vec()));
//! let outcome = match client.put("k", b"v1").await {
//!     Ok(()) => Outcome::Ok(Response::Written),
//!     Err(error) if error.is_definite_rejection() => Outcome::Failed,
//!     Err(_) => Outcome::Unknown,
//! };
//! recorder.complete(invocation, outcome);
//! // After the run:
//! let result = check(&recorder.history(), &None);
//! assert!(result.is_linearizable(), "{result}");
//! ```
#![allow(dead_code)] // each test binary uses a different part of the API

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// The contents of one key: `None` when the key is absent.
pub type Value = Option<Vec<u8>>;

/// What a client asked the store to do to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put(Vec<u8>),
    Delete,
    /// Compare-and-swap: if the key holds `expected`, make it hold `new` (`None` deletes it).
    Cas {
        expected: Value,
        new: Value,
    },
}

/// What the store answered to an operation that completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The answer to a `Get`: the value read.
    Read(Value),
    /// The answer to a `Put` or `Delete`.
    Written,
    /// The answer to a `Cas`: `true` if it swapped, `false` if the key did not hold `expected`.
    CasResult(bool),
}

/// How an operation ended, from the client's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Response),
    /// The store definitely did not apply the operation.
    Failed,
    /// The client does not know: the operation may take effect at any time after its
    /// invocation, or never.
    Unknown,
}

/// One operation of one client: what it asked, when, and what it learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub client: u64,
    pub key: Vec<u8>,
    pub op: Op,
    /// When the client sent the request, on a clock shared by all clients of the history.
    pub invoke_ns: u64,
    /// When the client got the answer; `None` exactly when the outcome is `Unknown`.
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

/// A recorded history: the events of all clients, in any order.
#[derive(Clone, Debug, Default)]
pub struct History {
    events: Vec<Event>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one event. Panics if it is malformed (a response that does not fit the op, a
    /// completion before the invocation, a completion time on an unknown outcome): that is a
    /// bug in the test's recording, not something to check.
    pub fn push(&mut self, event: Event) {
        if let Err(problem) = well_formed(&event) {
            panic!("malformed history event {event:?}: {problem}");
        }
        self.events.push(event);
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl FromIterator<Event> for History {
    fn from_iter<I: IntoIterator<Item = Event>>(events: I) -> Self {
        let mut history = History::new();
        events.into_iter().for_each(|event| history.push(event));
        history
    }
}

fn well_formed(event: &Event) -> Result<(), String> {
    let fits = match (&event.op, &event.outcome) {
        (_, Outcome::Failed | Outcome::Unknown) => true,
        (Op::Get, Outcome::Ok(response)) => matches!(response, Response::Read(_)),
        (Op::Put(_) | Op::Delete, Outcome::Ok(response)) => *response == Response::Written,
        (Op::Cas { .. }, Outcome::Ok(response)) => matches!(response, Response::CasResult(_)),
    };
    if !fits {
        return Err("the response does not answer this op".to_owned());
    }
    match (event.complete_ns, &event.outcome) {
        (Some(_), Outcome::Unknown) => Err("an unknown outcome has no completion time".to_owned()),
        (None, Outcome::Ok(_)) => Err("an Ok outcome needs a completion time".to_owned()),
        (Some(complete_ns), _) if complete_ns < event.invoke_ns => {
            Err("completed before it was invoked".to_owned())
        }
        _ => Ok(()),
    }
}

/// Records a history from concurrent clients (threads or tokio tasks; share it in an `Arc`).
///
/// Times come from one monotonic clock started by [`Recorder::new`]. Call
/// [`invoke`](Recorder::invoke) just before sending a request and
/// [`complete`](Recorder::complete) just after the answer arrives, so each recorded interval
/// contains the moment the store acted. The lock is held only to append or update one event,
/// never across an `.await`.
pub struct Recorder {
    clock_origin: Instant,
    events: Mutex<Vec<Event>>,
}

/// An operation in flight, returned by [`Recorder::invoke`]. Dropping it without calling
/// [`Recorder::complete`] (e.g. when a timeout cancels the task) leaves the outcome `Unknown`,
/// which is exactly what the client knows.
#[must_use = "an invocation that is never completed is recorded as Unknown"]
#[derive(Debug)]
pub struct Invocation {
    index: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            clock_origin: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Records that `client` is about to send `op` on `key`.
    pub fn invoke(&self, client: u64, key: impl Into<Vec<u8>>, op: Op) -> Invocation {
        let invoke_ns = self.now_ns();
        let event = Event {
            client,
            key: key.into(),
            op,
            invoke_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
        };
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.push(event);
        Invocation {
            index: events.len() - 1,
        }
    }

    /// Records how the invocation ended. Panics if the outcome does not fit its op.
    pub fn complete(&self, invocation: Invocation, outcome: Outcome) {
        let complete_ns = self.now_ns();
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let event = &mut events[invocation.index];
        event.complete_ns = match outcome {
            Outcome::Unknown => None,
            Outcome::Ok(_) | Outcome::Failed => Some(complete_ns),
        };
        event.outcome = outcome;
        if let Err(problem) = well_formed(event) {
            panic!("malformed completion of {event:?}: {problem}");
        }
    }

    /// A snapshot of everything recorded so far; operations still in flight are `Unknown`.
    pub fn history(&self) -> History {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        History {
            events: events.clone(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock_origin.elapsed().as_nanos()).expect("a test runs < 584 years")
    }
}

/// Bounds on the search.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Configurations (linearized set, register value) the search may enter for one key before
    /// it gives up with [`CheckResult::Inconclusive`]. Each costs under 70 bytes of memo (plus
    /// 4 bytes per group of unknown operations with identical effects), freed when the key is
    /// done.
    pub max_states_per_key: usize,
}

/// Enough for thousands of operations per key at the concurrency of a test cluster, including
/// the exhaustive search that proves a violation; at most ~150 MB of memo, seconds of search.
pub const DEFAULT_MAX_STATES_PER_KEY: usize = 2_000_000;

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
        }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key has a linearization. `ops_checked` counts the operations that took part in the
    /// search (failed operations and unknown reads are dropped beforehand).
    Linearizable { ops_checked: usize },
    /// `key` has no linearization. The explanation names the operation no order can place and
    /// the operations that constrain it, with their intervals.
    Violation { key: Vec<u8>, explanation: String },
    /// The search for `key` hit its budget before deciding; says nothing about correctness.
    Inconclusive { key: Vec<u8>, reason: String },
}

impl CheckResult {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable { .. })
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable { ops_checked } => {
                write!(f, "linearizable ({ops_checked} operations checked)")
            }
            CheckResult::Violation { key, explanation } => {
                write!(
                    f,
                    "not linearizable on key {}: {explanation}",
                    show_bytes(key)
                )
            }
            CheckResult::Inconclusive { key, reason } => {
                write!(f, "inconclusive on key {}: {reason}", show_bytes(key))
            }
        }
    }
}

/// Checks `history`, every key starting at `initial`, with the default search budget.
pub fn check(history: &History, initial: &Value) -> CheckResult {
    check_with(history, initial, CheckOptions::default())
}

/// Checks `history` key by key. A violation on any key is the answer (keys are checked in
/// byte order and the first violation is reported); otherwise the first inconclusive key.
pub fn check_with(history: &History, initial: &Value, options: CheckOptions) -> CheckResult {
    let mut events_by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, event) in history.events.iter().enumerate() {
        events_by_key.entry(&event.key).or_default().push(index);
    }
    let mut ops_checked = 0;
    let mut inconclusive = None;
    for (key, indices) in events_by_key {
        let key_history = KeyHistory::new(&history.events, &indices, initial);
        match search(&key_history, options.max_states_per_key) {
            SearchOutcome::Linearizable => ops_checked += key_history.ops.len(),
            SearchOutcome::Violation(frontier) => {
                let explanation = key_history.explain_violation(&frontier);
                return CheckResult::Violation {
                    key: key.to_vec(),
                    explanation,
                };
            }
            SearchOutcome::Inconclusive {
                states_visited,
                frontier,
            } => {
                let reason = key_history.explain_inconclusive(states_visited, frontier.as_ref());
                inconclusive.get_or_insert(CheckResult::Inconclusive {
                    key: key.to_vec(),
                    reason,
                });
            }
        }
    }
    inconclusive.unwrap_or(CheckResult::Linearizable { ops_checked })
}

/// An index into `KeyHistory::values`; interning keeps the register state a small integer.
type ValueId = u32;

/// Every value that no operation ever reads or compares against. Such values are
/// indistinguishable to every operation of the history, so the search treats them as one.
const UNOBSERVED: ValueId = 0;

/// What one operation does to the register, with its response folded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Effect {
    Read(ValueId),
    Write(ValueId),
    Swap {
        expected: ValueId,
        new: ValueId,
    },
    /// A `Cas` that answered `false`: the register held something other than `expected`.
    Mismatch {
        expected: ValueId,
    },
}

impl Effect {
    /// The register value after this operation, or `None` if it cannot happen in `state`.
    fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Effect::Read(value) => (state == value).then_some(state),
            Effect::Write(value) => Some(value),
            Effect::Swap { expected, new } => (state == expected).then_some(new),
            Effect::Mismatch { expected } => (state != expected).then_some(state),
        }
    }

    /// The value the register must hold for this operation to take effect, if one is required.
    fn needs(self) -> Option<ValueId> {
        match self {
            Effect::Read(value)
            | Effect::Swap {
                expected: value, ..
            } => Some(value),
            Effect::Write(_) | Effect::Mismatch { .. } => None,
        }
    }

    fn writes(self) -> Option<ValueId> {
        match self {
            Effect::Write(value) | Effect::Swap { new: value, .. } => Some(value),
            Effect::Read(_) | Effect::Mismatch { .. } => None,
        }
    }
}

/// One operation taking part in the search.
struct SearchOp {
    /// Index into the history's events, which is how explanations name operations.
    event: usize,
    effect: Effect,
    invoke_ns: u64,
    /// `None` for an unknown outcome: no deadline, and the operation may never take effect.
    complete_ns: Option<u64>,
}

impl SearchOp {
    fn has_deadline(&self) -> bool {
        self.complete_ns.is_some()
    }
}

/// The sub-history of one key, ready to search.
struct KeyHistory<'a> {
    events: &'a [Event],
    /// Indexed by `ValueId`; the entry at `UNOBSERVED` is a placeholder.
    values: Vec<Value>,
    initial: ValueId,
    /// The initial value itself, for explanations (`initial` may be `UNOBSERVED`).
    initial_value: &'a Value,
    ops: Vec<SearchOp>,
    /// Events dropped because they failed; explanations mention them when they wrote a value
    /// that was nevertheless read.
    failed_events: Vec<usize>,
}

impl<'a> KeyHistory<'a> {
    fn new(events: &'a [Event], indices: &[usize], initial: &'a Value) -> Self {
        let initial_value = initial;
        let observed: HashSet<Option<&[u8]>> = indices
            .iter()
            .filter_map(|&index| observed_value(&events[index]))
            .collect();
        let mut ids: HashMap<Option<&[u8]>, ValueId> = HashMap::new();
        let mut values = vec![None];
        let mut intern = |value: Option<&'a [u8]>| {
            if !observed.contains(&value) {
                return UNOBSERVED;
            }
            *ids.entry(value).or_insert_with(|| {
                values.push(value.map(<[u8]>::to_vec));
                ValueId::try_from(values.len() - 1).expect("fewer than 2^32 values per key")
            })
        };
        let initial = intern(initial.as_deref());
        let mut ops = Vec::new();
        let mut failed_events = Vec::new();
        for &index in indices {
            let event = &events[index];
            let effect = match (&event.op, &event.outcome) {
                (_, Outcome::Failed) => {
                    failed_events.push(index);
                    continue;
                }
                (Op::Get, Outcome::Unknown) => continue,
                (Op::Get, Outcome::Ok(Response::Read(value))) => {
                    Effect::Read(intern(value.as_deref()))
                }
                (Op::Put(value), Outcome::Ok(Response::Written) | Outcome::Unknown) => {
                    Effect::Write(intern(Some(value)))
                }
                (Op::Delete, Outcome::Ok(Response::Written) | Outcome::Unknown) => {
                    Effect::Write(intern(None))
                }
                (Op::Cas { expected, .. }, Outcome::Ok(Response::CasResult(false))) => {
                    Effect::Mismatch {
                        expected: intern(expected.as_deref()),
                    }
                }
                (
                    Op::Cas { expected, new },
                    Outcome::Ok(Response::CasResult(true)) | Outcome::Unknown,
                ) => Effect::Swap {
                    expected: intern(expected.as_deref()),
                    new: intern(new.as_deref()),
                },
                (op, outcome) => unreachable!("History::push rejects {op:?} answered {outcome:?}"),
            };
            let (invoke_ns, complete_ns) = (event.invoke_ns, event.complete_ns);
            ops.push(SearchOp {
                event: index,
                effect,
                invoke_ns,
                complete_ns,
            });
        }
        Self {
            events,
            values,
            initial,
            initial_value,
            ops,
            failed_events,
        }
    }

    /// The register value after placing `op` next, or `None` if it may not go next.
    ///
    /// The search only builds linearizations in which an unknown operation is followed directly
    /// by one that could not have taken effect without it. Any linearization can be brought
    /// into that form: if the next operation could also take effect on the value before the
    /// unknown one, then either the unknown one changed nothing anyone sees and can be left
    /// out, or the next operation only observes and the unknown one can move one place later.
    /// This keeps the search from trying every subset of never-observed unknown writes at every
    /// point of the history.
    fn placement(&self, stack: &[Placed], op: usize, state: ValueId) -> Option<ValueId> {
        let effect = self.ops[op].effect;
        if let Some(last) = stack
            .last()
            .filter(|last| !self.ops[last.op].has_deadline())
        {
            if effect.apply(last.state_before).is_some() {
                return None;
            }
        }
        effect.apply(state)
    }

    fn describe_op(&self, op: usize) -> String {
        describe_event(self.ops[op].event, &self.events[self.ops[op].event])
    }

    fn show(&self, value: ValueId) -> String {
        if value == UNOBSERVED {
            return "a value no operation reads".to_owned();
        }
        show_value(&self.values[value as usize])
    }

    fn explain_violation(&self, frontier: &Frontier) -> String {
        let stuck = &self.ops[frontier.stuck_op];
        let mut out = String::new();
        let _ = writeln!(
            out,
            "no linearization exists (initial value {}).",
            show_value(self.initial_value)
        );
        let _ = writeln!(
            out,
            "No order of the operations lets this one take effect within its interval:"
        );
        let _ = writeln!(out, "  {}", self.describe_op(frontier.stuck_op));
        let (related, unlisted_unknown) = self.related_ops(frontier.stuck_op);
        if !related.is_empty() {
            let _ = writeln!(out, "Operations that constrain it:");
        }
        for (op, reasons) in related.iter().take(MAX_EXPLAINED_OPS) {
            let _ = writeln!(out, "  {}  ({})", self.describe_op(*op), reasons.join("; "));
        }
        if related.len() > MAX_EXPLAINED_OPS {
            let _ = writeln!(out, "  ... and {} more", related.len() - MAX_EXPLAINED_OPS);
        }
        if unlisted_unknown > 0 {
            let _ = writeln!(
                out,
                "  (and {unlisted_unknown} older operations with unknown outcome, which could have \
                 taken effect at any point but write nothing it needs)"
            );
        }
        if let Some(needed) = stuck.effect.needs() {
            self.explain_sources_of(needed, &mut out);
        }
        let _ = write!(
            out,
            "Deepest partial linearization: {} of {} operations placed, the key holding {} there.",
            frontier.linearized,
            self.ops.len(),
            self.show(frontier.state)
        );
        out
    }

    /// Where the value the stuck operation needed could have come from, beyond the writers
    /// listed among the related operations.
    fn explain_sources_of(&self, needed: ValueId, out: &mut String) {
        if needed == self.initial {
            let _ = writeln!(out, "{} is also the initial value.", self.show(needed));
        }
        let any_writer = self.ops.iter().any(|op| op.effect.writes() == Some(needed));
        if !any_writer && needed != self.initial {
            let _ = writeln!(
                out,
                "No operation that may have taken effect writes {}.",
                self.show(needed)
            );
        }
        let needed_value = self.values[needed as usize].as_deref();
        for &event in &self.failed_events {
            let writes_needed = match &self.events[event].op {
                Op::Put(value) => needed_value == Some(value.as_slice()),
                Op::Delete => needed_value.is_none(),
                Op::Cas { new, .. } => new.as_deref() == needed_value,
                Op::Get => false,
            };
            if writes_needed {
                let description = describe_event(event, &self.events[event]);
                let _ = writeln!(
                    out,
                    "  {description}  (writes it, but failed, so it took no effect)"
                );
            }
        }
    }

    /// The operations that bear on whether `stuck` can be placed, each with why, in history
    /// order: the last ones to complete before it was invoked (they fix the value it starts
    /// from), those overlapping it (they may be ordered on either side), and those writing or
    /// swapping away the value it needs. Unknown operations invoked before all of those are
    /// only counted, not listed, unless they write the value it needs.
    fn related_ops(&self, stuck: usize) -> (Vec<(usize, Vec<&'static str>)>, usize) {
        let stuck_op = &self.ops[stuck];
        let stuck_complete = stuck_op
            .complete_ns
            .expect("only operations with a deadline get stuck");
        let precedes = |op: &SearchOp| op.complete_ns.is_some_and(|done| done < stuck_op.invoke_ns);
        // A predecessor is among the last iff no other predecessor was invoked after it completed.
        let latest_predecessor_invoke = self
            .ops
            .iter()
            .filter(|op| precedes(op))
            .map(|op| op.invoke_ns)
            .max();
        let is_last_predecessor = |op: &SearchOp| {
            precedes(op)
                && op
                    .complete_ns
                    .zip(latest_predecessor_invoke)
                    .is_some_and(|(done, latest)| done >= latest)
        };
        let window_start_ns = self
            .ops
            .iter()
            .filter(|op| is_last_predecessor(op))
            .map(|op| op.invoke_ns)
            .min()
            .unwrap_or(stuck_op.invoke_ns);
        let needed = stuck_op.effect.needs();
        let mut unlisted_unknown = 0;
        let mut related = Vec::new();
        for (index, op) in self.ops.iter().enumerate() {
            let may_precede = index != stuck && op.invoke_ns <= stuck_complete;
            if !may_precede {
                continue;
            }
            let mut reasons = Vec::new();
            if is_last_predecessor(op) {
                reasons.push("completed before it was invoked, and nothing completed in between");
            }
            let overlaps = !precedes(op);
            if overlaps && op.has_deadline() {
                reasons.push("overlaps it");
            }
            if needed.is_some() && op.effect.writes() == needed {
                reasons.push("writes the value it needs");
            }
            if needed.is_some()
                && matches!(op.effect, Effect::Swap { expected, .. } if Some(expected) == needed)
            {
                reasons.push("swaps away the value it needs");
            }
            if overlaps
                && !op.has_deadline()
                && (op.invoke_ns >= window_start_ns || !reasons.is_empty())
            {
                reasons
                    .push("outcome unknown: may have taken effect any time after its invocation");
            } else if overlaps && !op.has_deadline() {
                unlisted_unknown += 1;
            }
            if !reasons.is_empty() {
                related.push((index, reasons));
            }
        }
        (related, unlisted_unknown)
    }

    fn explain_inconclusive(&self, states_visited: usize, frontier: Option<&Frontier>) -> String {
        let mut reason = format!(
            "gave up after visiting {states_visited} search states \
             (CheckOptions::max_states_per_key) among {} operations",
            self.ops.len()
        );
        if let Some(frontier) = frontier {
            let _ = write!(
                reason,
                "; the deepest partial linearization placed {} operations, and the search got \
                 furthest stuck at {}",
                frontier.linearized,
                self.describe_op(frontier.stuck_op)
            );
        }
        reason
    }
}

/// The value an operation reads or compares against, which makes that value observable.
fn observed_value(event: &Event) -> Option<Option<&[u8]>> {
    match (&event.op, &event.outcome) {
        (Op::Get, Outcome::Ok(Response::Read(value))) => Some(value.as_deref()),
        (Op::Cas { expected, .. }, Outcome::Ok(_) | Outcome::Unknown) => Some(expected.as_deref()),
        _ => None,
    }
}

/// At most this many related operations are listed in an explanation.
const MAX_EXPLAINED_OPS: usize = 16;

/// The furthest (in time) point where the search had to backtrack: the operation whose
/// completion it could not get past, and the partial linearization it had at that moment.
#[derive(Clone, Copy, Debug)]
struct Frontier {
    stuck_op: usize,
    /// The position of the stuck operation's return entry in time order.
    entry: usize,
    linearized: usize,
    state: ValueId,
}

enum SearchOutcome {
    Linearizable,
    Violation(Frontier),
    Inconclusive {
        states_visited: usize,
        frontier: Option<Frontier>,
    },
}

/// One linearized operation on the search stack, with the register value before it.
struct Placed {
    op: usize,
    state_before: ValueId,
}

/// Wing & Gong's search with Lowe's memoization, over one key's operations.
///
/// Each configuration scans the placeable calls (those ahead of the first return entry) twice:
/// first for operations with a known response, then for unknown ones, so the search explains
/// what it can without spending unknown operations, and the memo's dominance check (fewer
/// unknowns spent is better) prunes the rest.
fn search(history: &KeyHistory<'_>, max_states: usize) -> SearchOutcome {
    let mut timeline = Timeline::new(&history.ops);
    let mut linearized = LinearizedSet::new(&history.ops);
    let mut memo = Memo::new(history.values.len(), linearized.counts.len());
    let mut demand = Demand::default();
    let mut stack: Vec<Placed> = Vec::with_capacity(history.ops.len());
    let mut state = history.initial;
    let mut unplaced_with_deadline = history.ops.iter().filter(|op| op.has_deadline()).count();
    let mut frontier: Option<Frontier> = None;

    let mut entry = timeline.first();
    let mut unknown_pass = false;
    while unplaced_with_deadline > 0 {
        let (op, is_call) = timeline.entry(entry);
        if is_call {
            let has_deadline = history.ops[op].has_deadline();
            let in_this_pass = has_deadline != unknown_pass && linearized.next_of_its_group(op);
            let placed = in_this_pass
                .then(|| history.placement(&stack, op, state))
                .flatten();
            let placed = placed.filter(|&next_state| {
                if !has_deadline {
                    demand.refresh(state, history, &timeline);
                    if !demand.met_by(op, next_state, state) {
                        return false;
                    }
                }
                // After an unknown operation, the value before it restricts the next move.
                let restricted_by = (!has_deadline).then_some(state);
                memo.first_visit(&linearized, op, next_state, restricted_by)
            });
            let Some(next_state) = placed else {
                entry = timeline.next(entry);
                continue;
            };
            if memo.configurations_entered > max_states {
                return SearchOutcome::Inconclusive {
                    states_visited: memo.configurations_entered,
                    frontier,
                };
            }
            stack.push(Placed {
                op,
                state_before: state,
            });
            demand.invalidate();
            linearized.add(op);
            state = next_state;
            timeline.lift(op);
            unplaced_with_deadline -= usize::from(has_deadline);
            entry = timeline.first();
            unknown_pass = false;
            continue;
        }
        // A return entry ahead of every placeable call: the end of this configuration's window.
        if !unknown_pass {
            unknown_pass = true;
            entry = timeline.first();
            continue;
        }
        // `op` missed its deadline on this path.
        if frontier.is_none_or(|deepest| entry > deepest.entry) {
            frontier = Some(Frontier {
                stuck_op: op,
                entry,
                linearized: stack.len(),
                state,
            });
        }
        let Some(Placed {
            op: undone,
            state_before,
        }) = stack.pop()
        else {
            return SearchOutcome::Violation(frontier.expect("set just above"));
        };
        demand.invalidate();
        linearized.remove(undone);
        state = state_before;
        timeline.unlift(undone);
        unknown_pass = !history.ops[undone].has_deadline();
        unplaced_with_deadline += usize::from(!unknown_pass);
        entry = timeline.next(timeline.call_node[undone]);
    }
    SearchOutcome::Linearizable
}

/// What the placeable operations that cannot take effect on the current register value need
/// instead. An unknown operation is only worth placing if it meets one of these needs (see
/// [`KeyHistory::placement`]), which spares the search a dead end per pending unknown write
/// per configuration. Computed only when asked, and then once until the configuration changes.
#[derive(Default)]
struct Demand {
    /// Whether this describes the current configuration.
    fresh: bool,
    /// (value, the operation that needs the register to hold it).
    values: Vec<(ValueId, usize)>,
    /// A placeable `Cas` that reported a mismatch is blocked by the current value: any other
    /// value unblocks it.
    mismatch_blocked: bool,
}

impl Demand {
    fn invalidate(&mut self) {
        self.fresh = false;
    }

    fn refresh(&mut self, state: ValueId, history: &KeyHistory<'_>, timeline: &Timeline) {
        if self.fresh {
            return;
        }
        self.fresh = true;
        self.values.clear();
        self.mismatch_blocked = false;
        let mut node = timeline.first();
        while let (op, true) = timeline.entry(node) {
            let effect = history.ops[op].effect;
            if effect.apply(state).is_none() {
                match effect.needs() {
                    Some(value) => self.values.push((value, op)),
                    None => self.mismatch_blocked = true,
                }
            }
            node = timeline.next(node);
        }
    }

    /// Whether placing unknown `op`, which makes the register hold `written`, lets another
    /// placeable operation take effect that cannot on `state`.
    fn met_by(&self, op: usize, written: ValueId, state: ValueId) -> bool {
        let needed = self
            .values
            .iter()
            .any(|&(value, needy)| value == written && needy != op);
        needed || (self.mismatch_blocked && written != state)
    }
}

/// The set of linearized operations: a 128-bit Zobrist hash (the XOR of a fixed random key per
/// operation in it, updated in O(1)) and, for interchangeable unknown operations, counts.
///
/// Unknown operations with the same effect are interchangeable: each does the same, and one
/// invoked earlier can be placed wherever one invoked later can. So the members of a group of
/// two or more are placed in invocation order, and the set records only how many it holds.
struct LinearizedSet {
    hash: u128,
    op_keys: Vec<u128>,
    /// For unknown operations with interchangeable twins, their group (an index into `counts`).
    group_of: Vec<Option<usize>>,
    /// Each group's operations in invocation order; the first `counts[group]` are placed.
    members: Vec<Vec<usize>>,
    counts: Vec<u32>,
}

impl LinearizedSet {
    fn new(ops: &[SearchOp]) -> Self {
        let mut twins: HashMap<Effect, Vec<usize>> = HashMap::new();
        for (index, op) in ops.iter().enumerate().filter(|(_, op)| !op.has_deadline()) {
            twins.entry(op.effect).or_default().push(index);
        }
        let mut members: Vec<Vec<usize>> = twins
            .into_values()
            .filter(|members| members.len() > 1)
            .collect();
        members.sort_unstable(); // deterministic group numbers
        let mut group_of = vec![None; ops.len()];
        for (group, group_members) in members.iter_mut().enumerate() {
            // Ties in invocation time are broken the way the timeline sorts calls.
            group_members.sort_unstable_by_key(|&op| (ops[op].invoke_ns, op));
            group_members
                .iter()
                .for_each(|&op| group_of[op] = Some(group));
        }
        let mut keys = KeyStream::new(0x0B5E_7FED_5E75);
        let counts = vec![0; members.len()];
        Self {
            hash: 0,
            op_keys: ops.iter().map(|_| keys.draw()).collect(),
            group_of,
            members,
            counts,
        }
    }

    /// Whether `op` is not held back by an unplaced twin invoked before it.
    fn next_of_its_group(&self, op: usize) -> bool {
        self.group_of[op].is_none_or(|group| self.members[group][self.counts[group] as usize] == op)
    }

    fn add(&mut self, op: usize) {
        match self.group_of[op] {
            Some(group) => self.counts[group] += 1,
            None => self.hash ^= self.op_keys[op],
        }
    }

    fn remove(&mut self, op: usize) {
        match self.group_of[op] {
            Some(group) => self.counts[group] -= 1,
            None => self.hash ^= self.op_keys[op],
        }
    }
}

/// The configurations the search has entered. A configuration is keyed by a 128-bit Zobrist
/// hash: the linearized set's hash XOR a key for the register value and, when the last
/// operation placed is unknown, a key for the value before it (which restricts the next move).
/// Under each key it keeps the count vectors of interchangeable unknown operations spent.
///
/// A configuration need not be entered if one was entered under the same key, or under the
/// same key unrestricted, with no more unknown operations of any group spent: that one had
/// every move this one has. Each key keeps at most `MAX_COUNT_VECTORS_PER_KEY` minimal count
/// vectors; forgetting one only limits what is pruned, never what is found.
///
/// A hash collision could only make the search skip a configuration it has not explored, that
/// is report a violation that is not there; it never accepts a bad history. At 2^-128 per pair
/// of configurations, that is not a practical concern.
struct Memo {
    value_keys: Vec<u128>,
    restriction_keys: Vec<u128>,
    /// Count vectors of `groups` entries each, concatenated; empty when there are no groups.
    visited: HashMap<u128, Box<[u32]>, BuildHasherDefault<PrehashedHasher>>,
    groups: usize,
    configurations_entered: usize,
}

/// Bounds the memory one key of the memo may hold when count vectors are incomparable.
const MAX_COUNT_VECTORS_PER_KEY: usize = 8;

impl Memo {
    fn new(values: usize, groups: usize) -> Self {
        let mut keys = KeyStream::new(0x5EED_0F11_4EA2);
        Self {
            value_keys: (0..values).map(|_| keys.draw()).collect(),
            restriction_keys: (0..values).map(|_| keys.draw()).collect(),
            visited: HashMap::default(),
            groups,
            configurations_entered: 0,
        }
    }

    /// Whether placing `op` in `linearized` leads to a configuration worth entering; if so,
    /// records it as entered.
    fn first_visit(
        &mut self,
        linearized: &LinearizedSet,
        op: usize,
        state: ValueId,
        restricted_by: Option<ValueId>,
    ) -> bool {
        let added_group = linearized.group_of[op];
        let set_hash = match added_group {
            Some(_) => linearized.hash,
            None => linearized.hash ^ linearized.op_keys[op],
        };
        let count = |group: usize| linearized.counts[group] + u32::from(added_group == Some(group));
        let unrestricted = set_hash ^ self.value_keys[state as usize];
        let key = match restricted_by {
            None => unrestricted,
            Some(before) => unrestricted ^ self.restriction_keys[before as usize],
        };
        if self.covers(unrestricted, count) || (key != unrestricted && self.covers(key, count)) {
            return false;
        }
        let counts: Vec<u32> = (0..self.groups).map(count).collect();
        self.remember(key, &counts);
        self.configurations_entered += 1;
        true
    }

    /// Adds `counts` to the minimal count vectors kept under `key`.
    fn remember(&mut self, key: u128, counts: &[u32]) {
        let groups = self.groups;
        let stored = self.visited.entry(key).or_default();
        if groups == 0 {
            return;
        }
        let mut kept: Vec<u32> = stored
            .chunks(groups)
            .filter(|vector| !dominates(counts, vector))
            .flatten()
            .copied()
            .collect();
        if kept.len() / groups >= MAX_COUNT_VECTORS_PER_KEY {
            kept.drain(..groups); // the oldest
        }
        kept.extend_from_slice(counts);
        *stored = kept.into_boxed_slice();
    }

    /// Whether a configuration entered under `key` had no more unknown operations spent than
    /// `count` says of each group.
    fn covers(&self, key: u128, count: impl Fn(usize) -> u32) -> bool {
        let Some(stored) = self.visited.get(&key) else {
            return false;
        };
        let dominates_count = |vector: &[u32]| {
            vector
                .iter()
                .enumerate()
                .all(|(group, &spent)| spent <= count(group))
        };
        self.groups == 0 || stored.chunks(self.groups).any(dominates_count)
    }
}

/// Whether count vector `fewer` is nowhere greater than `more`.
fn dominates(fewer: &[u32], more: &[u32]) -> bool {
    fewer.iter().zip(more).all(|(fewer, more)| fewer <= more)
}

/// Call and return entries in time order, as a doubly linked list whose entries can be lifted
/// out and put back in LIFO order (dancing links). Node 0 is the head, the last node the tail.
struct Timeline {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation and whether it is the call (else the return) entry.
    node_entry: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    return_node: Vec<Option<usize>>,
}

impl Timeline {
    fn new(ops: &[SearchOp]) -> Self {
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (index, op) in ops.iter().enumerate() {
            // `false` sorts first: at equal times calls precede returns, so an operation that
            // completes at the instant another is invoked counts as concurrent with it.
            entries.push((op.invoke_ns, false, index));
            if let Some(complete_ns) = op.complete_ns {
                entries.push((complete_ns, true, index));
            }
        }
        entries.sort_unstable();
        let nodes = entries.len() + 2;
        let mut timeline = Timeline {
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|node| node.saturating_sub(1)).collect(),
            node_entry: vec![(usize::MAX, false); nodes],
            call_node: vec![0; ops.len()],
            return_node: vec![None; ops.len()],
        };
        for (position, &(_, is_return, op)) in entries.iter().enumerate() {
            let node = position + 1;
            timeline.node_entry[node] = (op, !is_return);
            if is_return {
                timeline.return_node[op] = Some(node);
            } else {
                timeline.call_node[op] = node;
            }
        }
        timeline
    }

    fn first(&self) -> usize {
        self.next[0]
    }

    fn next(&self, node: usize) -> usize {
        self.next[node]
    }

    /// The operation at `node` and whether `node` is its call entry.
    fn entry(&self, node: usize) -> (usize, bool) {
        assert!(
            node != 0 && node != self.next.len() - 1,
            "while an operation with a deadline is unplaced, its return entry lies ahead"
        );
        self.node_entry[node]
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(node) = self.return_node[op] {
            self.unlink(node);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(node) = self.return_node[op] {
            self.relink(node);
        }
        self.relink(self.call_node[op]);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

/// A deterministic stream of random 128-bit keys (splitmix64), so checks are reproducible.
struct KeyStream(u64);

impl KeyStream {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn draw(&mut self) -> u128 {
        let high = u128::from(self.draw_u64());
        (high << 64) | u128::from(self.draw_u64())
    }

    fn draw_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The memo's keys are already uniformly random, so hashing them again would only cost time.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = (value as u64) ^ ((value >> 64) as u64);
    }
}

fn describe_event(index: usize, event: &Event) -> String {
    let op = match &event.op {
        Op::Get => "get".to_owned(),
        Op::Put(value) => format!("put {}", show_bytes(value)),
        Op::Delete => "delete".to_owned(),
        Op::Cas { expected, new } => format!("cas {} -> {}", show_value(expected), show_value(new)),
    };
    let outcome = match &event.outcome {
        Outcome::Ok(Response::Read(value)) => format!("read {}", show_value(value)),
        Outcome::Ok(Response::Written) => "ok".to_owned(),
        Outcome::Ok(Response::CasResult(true)) => "swapped".to_owned(),
        Outcome::Ok(Response::CasResult(false)) => "compare failed".to_owned(),
        Outcome::Failed => "failed".to_owned(),
        Outcome::Unknown => "unknown".to_owned(),
    };
    let interval = match event.complete_ns {
        Some(complete_ns) => format!("invoked {}ns, completed {complete_ns}ns", event.invoke_ns),
        None => format!("invoked {}ns, no completion", event.invoke_ns),
    };
    format!(
        "#{index} client {}: {op} => {outcome} [{interval}]",
        event.client
    )
}

fn show_value(value: &Value) -> String {
    match value {
        Some(bytes) => show_bytes(bytes),
        None => "absent".to_owned(),
    }
}

/// Printable UTF-8 as a quoted string, anything else as hex; long values are cut short.
fn show_bytes(bytes: &[u8]) -> String {
    const MAX_SHOWN_BYTES: usize = 48;
    let shown = &bytes[..bytes.len().min(MAX_SHOWN_BYTES)];
    let mut text = match std::str::from_utf8(shown) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => shown.iter().fold("0x".to_owned(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        }),
    };
    if bytes.len() > MAX_SHOWN_BYTES {
        let _ = write!(text, "...({} bytes)", bytes.len());
    }
    text
}
