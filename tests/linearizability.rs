//! Specification of the linearizability checker in `support/linearizability.rs`.
//!
//! Small hand-written histories pin down each rule of the register model (what counts as
//! stale, lost, or out of thin air; what an unknown or failed outcome allows); simulated
//! histories from a true atomic register check that the search accepts correct executions of
//! realistic size and catches a single corrupted response in them; and an exhaustive
//! enumeration of orders cross-checks the search, with all its reductions, on thousands of tiny
//! random histories. Times are in nanoseconds; `(invoke, complete)` pairs are `Span`s.

#[path = "support/linearizability.rs"]
mod linearizability;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linearizability::{
    check, check_with, CheckOptions, CheckResult, Event, History, Op, Outcome, Recorder, Response,
    Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEY: &[u8] = b"k";

type Span = (u64, u64);

fn value(text: &str) -> Value {
    Some(text.as_bytes().to_vec())
}

fn value_or_absent(text: Option<&str>) -> Value {
    text.map(|text| text.as_bytes().to_vec())
}

fn completed(client: u64, op: Op, response: Response, (invoke_ns, complete_ns): Span) -> Event {
    Event {
        client,
        key: KEY.to_vec(),
        op,
        invoke_ns,
        complete_ns: Some(complete_ns),
        outcome: Outcome::Ok(response),
    }
}

fn put(client: u64, written: &str, span: Span) -> Event {
    completed(
        client,
        Op::Put(written.as_bytes().to_vec()),
        Response::Written,
        span,
    )
}

fn delete(client: u64, span: Span) -> Event {
    completed(client, Op::Delete, Response::Written, span)
}

fn get(client: u64, read: Option<&str>, span: Span) -> Event {
    completed(client, Op::Get, Response::Read(value_or_absent(read)), span)
}

fn cas(client: u64, expected: Option<&str>, new: Option<&str>, swapped: bool, span: Span) -> Event {
    let op = Op::Cas {
        expected: value_or_absent(expected),
        new: value_or_absent(new),
    };
    completed(client, op, Response::CasResult(swapped), span)
}

fn unknown(client: u64, op: Op, invoke_ns: u64) -> Event {
    Event {
        client,
        key: KEY.to_vec(),
        op,
        invoke_ns,
        complete_ns: None,
        outcome: Outcome::Unknown,
    }
}

fn failed(client: u64, op: Op, (invoke_ns, complete_ns): Span) -> Event {
    Event {
        client,
        key: KEY.to_vec(),
        op,
        invoke_ns,
        complete_ns: Some(complete_ns),
        outcome: Outcome::Failed,
    }
}

fn put_op(written: &str) -> Op {
    Op::Put(written.as_bytes().to_vec())
}

fn on_key(key: &[u8], event: Event) -> Event {
    Event {
        key: key.to_vec(),
        ..event
    }
}

fn check_events(events: Vec<Event>) -> CheckResult {
    check(&events.into_iter().collect(), &None)
}

fn assert_linearizable(events: Vec<Event>) {
    let result = check_events(events);
    assert!(
        result.is_linearizable(),
        "a linearizable history was rejected: {result}"
    );
}

/// Asserts a violation and returns its explanation, for further assertions on what it names.
fn assert_violation(events: Vec<Event>) -> String {
    match check_events(events) {
        CheckResult::Violation { explanation, .. } => explanation,
        other => panic!("a non-linearizable history was not reported as a violation: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The register model

#[test]
fn sequential_history_of_every_operation_kind_is_linearizable() {
    assert_linearizable(vec![
        get(1, None, (0, 10)),
        put(1, "v1", (20, 30)),
        get(2, Some("v1"), (40, 50)),
        cas(1, Some("v1"), Some("v2"), true, (60, 70)),
        cas(2, Some("v1"), Some("v3"), false, (80, 90)),
        get(3, Some("v2"), (100, 110)),
        cas(3, Some("v2"), None, true, (120, 130)),
        get(1, None, (140, 150)),
        put(2, "v4", (160, 170)),
        delete(3, (180, 190)),
        get(1, None, (200, 210)),
        cas(2, None, Some("v5"), true, (220, 230)),
        get(3, Some("v5"), (240, 250)),
    ]);
}

#[test]
fn overlapping_writes_may_be_read_in_either_order() {
    // Two puts overlap; reads during and after them may see either, as long as every read
    // after both completed agrees on the one that went last.
    for (during, after) in [("v1", "v2"), ("v2", "v1"), ("v1", "v1"), ("v2", "v2")] {
        assert_linearizable(vec![
            put(1, "v1", (0, 100)),
            put(2, "v2", (10, 90)),
            get(3, Some(during), (20, 30)),
            get(3, Some(after), (120, 130)),
            get(4, Some(after), (140, 150)),
        ]);
    }
    // A read overlapping both writes may also see what was there before them.
    assert_linearizable(vec![
        put(1, "v0", (0, 5)),
        put(1, "v1", (10, 100)),
        put(2, "v2", (10, 90)),
        get(3, Some("v0"), (20, 30)),
        get(3, Some("v1"), (40, 50)),
    ]);
}

#[test]
fn read_invoked_after_a_completed_write_must_not_return_the_older_value() {
    // The etcd/Jepsen stale read: v2 is acknowledged, then a read invoked later sees v1.
    let explanation = assert_violation(vec![
        put(1, "v1", (0, 10)),
        put(1, "v2", (20, 30)),
        get(2, Some("v1"), (40, 50)),
    ]);
    assert!(
        explanation.contains("#2 client 2: get => read \"v1\""),
        "the explanation should name the stale read:\n{explanation}"
    );
    assert!(
        explanation.contains("#1 client 1: put \"v2\"")
            && explanation.contains("#0 client 1: put \"v1\""),
        "the explanation should name the write that hid v1 and the write of v1:\n{explanation}"
    );
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let explanation = assert_violation(vec![
        put(1, "v1", (0, 10)),
        get(2, Some("v1"), (20, 30)),
        get(2, Some("phantom"), (40, 50)),
    ]);
    assert!(
        explanation.contains("No operation that may have taken effect writes \"phantom\""),
        "the explanation should say nothing wrote the value read:\n{explanation}"
    );
    // Not even the initial value may be read once something else was written.
    assert_violation(vec![put(1, "v1", (0, 10)), get(2, None, (20, 30))]);
}

#[test]
fn acknowledged_write_must_not_be_lost() {
    assert_violation(vec![
        put(1, "v1", (0, 10)),
        get(2, Some("v1"), (20, 30)),
        put(1, "v2", (40, 50)),
        get(2, Some("v1"), (60, 70)),
        get(3, Some("v1"), (80, 90)),
        get(2, Some("v1"), (100, 110)),
    ]);
}

#[test]
fn reads_must_not_go_backwards() {
    // v2's write is still in flight, so the first read may see it; once a read has, a later
    // read that does not overlap it must not see v1 again.
    let history = |first: &str, second: &str| {
        vec![
            put(1, "v1", (0, 10)),
            put(1, "v2", (20, 200)),
            get(2, Some(first), (30, 40)),
            get(3, Some(second), (50, 60)),
        ]
    };
    assert_linearizable(history("v1", "v2"));
    assert_linearizable(history("v2", "v2"));
    let explanation = assert_violation(history("v2", "v1"));
    assert!(
        explanation.contains("#2 client 2: get => read \"v2\""),
        "the explanation should name the earlier read that saw v2:\n{explanation}"
    );
}

#[test]
fn deleted_key_reads_absent_until_written_again() {
    assert_linearizable(vec![
        put(1, "v1", (0, 10)),
        delete(2, (20, 30)),
        get(3, None, (40, 50)),
    ]);
    assert_violation(vec![
        put(1, "v1", (0, 10)),
        delete(2, (20, 30)),
        get(3, Some("v1"), (40, 50)),
    ]);
}

#[test]
fn cas_swaps_only_from_the_expected_value() {
    assert_violation(vec![
        put(1, "v1", (0, 10)),
        cas(2, Some("v0"), Some("v2"), true, (20, 30)),
    ]);
    assert_violation(vec![cas(2, Some("v0"), Some("v2"), true, (0, 10))]);
}

#[test]
fn cas_that_reports_a_mismatch_must_have_seen_another_value() {
    assert_linearizable(vec![
        put(1, "v1", (0, 10)),
        cas(2, Some("v0"), Some("v2"), false, (20, 30)),
    ]);
    assert_violation(vec![
        put(1, "v1", (0, 10)),
        cas(2, Some("v1"), Some("v2"), false, (20, 30)),
    ]);
    // A failed comparison changes nothing.
    assert_violation(vec![
        put(1, "v1", (0, 10)),
        cas(2, Some("v0"), Some("v2"), false, (20, 30)),
        get(3, Some("v2"), (40, 50)),
    ]);
}

#[test]
fn two_cas_from_the_same_value_cannot_both_succeed() {
    assert_linearizable(vec![
        put(1, "0", (0, 10)),
        cas(1, Some("0"), Some("1"), true, (20, 40)),
        cas(2, Some("0"), Some("1"), false, (25, 45)),
        get(3, Some("1"), (50, 60)),
    ]);
    assert_violation(vec![
        put(1, "0", (0, 10)),
        cas(1, Some("0"), Some("1"), true, (20, 40)),
        cas(2, Some("0"), Some("1"), true, (25, 45)),
        get(3, Some("1"), (50, 60)),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Unknown and failed outcomes

#[test]
fn unknown_put_that_later_becomes_visible_is_linearizable() {
    assert_linearizable(vec![
        put(1, "v1", (0, 10)),
        unknown(2, put_op("v2"), 20),
        get(3, Some("v1"), (30, 40)),
        put(1, "v3", (50, 60)),
        get(3, Some("v3"), (70, 80)),
        // The timed-out put lands long after its client gave up.
        get(3, Some("v2"), (500, 510)),
        get(1, Some("v2"), (520, 530)),
    ]);
}

#[test]
fn unknown_put_that_is_never_observed_is_linearizable() {
    assert_linearizable(vec![
        put(1, "v1", (0, 10)),
        unknown(2, put_op("v2"), 20),
        unknown(2, Op::Delete, 25),
        get(3, Some("v1"), (30, 40)),
        get(3, Some("v1"), (50, 60)),
        get(1, Some("v1"), (500, 510)),
    ]);
}

#[test]
fn unknown_put_cannot_take_effect_before_its_invocation() {
    assert_violation(vec![
        put(1, "v1", (0, 10)),
        get(3, Some("v2"), (20, 30)),
        unknown(2, put_op("v2"), 40),
    ]);
}

#[test]
fn unknown_put_takes_effect_at_most_once() {
    assert_violation(vec![
        unknown(2, put_op("v2"), 0),
        get(3, Some("v2"), (10, 20)),
        put(1, "v3", (30, 40)),
        get(3, Some("v2"), (50, 60)),
    ]);
}

#[test]
fn unknown_cas_takes_effect_only_from_its_expected_value() {
    let history = |expected: &str| {
        vec![
            put(1, "v1", (0, 10)),
            unknown(
                2,
                Op::Cas {
                    expected: value(expected),
                    new: value("v2"),
                },
                20,
            ),
            get(3, Some("v2"), (30, 40)),
        ]
    };
    assert_linearizable(history("v1"));
    assert_violation(history("v0"));
}

#[test]
fn unknown_get_is_ignored_whatever_it_was_asked() {
    assert_linearizable(vec![
        put(1, "v1", (0, 10)),
        unknown(2, Op::Get, 20),
        get(3, Some("v1"), (30, 40)),
    ]);
}

#[test]
fn unknown_write_may_explain_a_cas_mismatch_and_then_stays_visible() {
    let history = |later_read: &str| {
        vec![
            put(1, "v1", (0, 10)),
            unknown(2, put_op("never-read"), 5),
            cas(3, Some("v1"), Some("v2"), false, (20, 30)),
            get(3, Some(later_read), (40, 50)),
        ]
    };
    // The timed-out put landed before the CAS, so the CAS saw it and not v1 ...
    assert_linearizable(history("never-read"));
    // ... and v1 cannot come back afterwards.
    assert_violation(history("v1"));
}

#[test]
fn each_unknown_write_explains_at_most_one_cas_mismatch() {
    let mut history = vec![
        put(1, "v1", (0, 10)),
        unknown(2, put_op("x"), 5),
        cas(3, Some("v1"), Some("v2"), false, (20, 30)),
        put(1, "v1", (40, 50)),
        cas(3, Some("v1"), Some("v3"), false, (60, 70)),
    ];
    assert_violation(history.clone());
    history.push(unknown(4, put_op("y"), 6));
    assert_linearizable(history);
}

#[test]
fn interchangeable_unknown_deletes_each_take_effect_at_most_once() {
    let mut history = vec![
        put(1, "v1", (0, 10)),
        unknown(2, Op::Delete, 5),
        get(4, None, (20, 30)),
        put(1, "v2", (40, 50)),
        get(4, None, (60, 70)),
    ];
    assert_violation(history.clone());
    history.push(unknown(3, Op::Delete, 6));
    assert_linearizable(history);
}

#[test]
fn chained_unknown_cas_operations_may_all_take_effect() {
    let history = |first_expected: &str| {
        vec![
            put(1, "a", (0, 10)),
            unknown(
                2,
                Op::Cas {
                    expected: value(first_expected),
                    new: value("b"),
                },
                5,
            ),
            unknown(
                3,
                Op::Cas {
                    expected: value("b"),
                    new: value("c"),
                },
                6,
            ),
            get(4, Some("c"), (20, 30)),
        ]
    };
    assert_linearizable(history("a"));
    assert_violation(history("z"));
}

#[test]
fn failed_write_has_no_effect() {
    assert_linearizable(vec![
        put(1, "v1", (0, 10)),
        failed(2, put_op("v2"), (20, 30)),
        get(3, Some("v1"), (40, 50)),
    ]);
    let explanation = assert_violation(vec![
        put(1, "v1", (0, 10)),
        failed(2, put_op("v2"), (20, 30)),
        get(3, Some("v2"), (40, 50)),
    ]);
    assert!(
        explanation.contains("failed, so it took no effect"),
        "the explanation should point at the failed write of the value read:\n{explanation}"
    );
}

// ---------------------------------------------------------------------------------------------
// Keys, budget, malformed input

#[test]
fn keys_are_independent_registers() {
    // As one register the last read would be stale; as two keys every read is current.
    let result = check_events(vec![
        on_key(b"x", put(1, "1", (0, 10))),
        on_key(b"y", put(1, "2", (20, 30))),
        on_key(b"x", get(2, Some("1"), (40, 50))),
        on_key(b"y", get(2, Some("2"), (60, 70))),
    ]);
    assert_eq!(
        result,
        CheckResult::Linearizable { ops_checked: 4 },
        "{result}"
    );
}

#[test]
fn violation_names_the_offending_key() {
    let result = check_events(vec![
        on_key(b"a", put(1, "1", (0, 10))),
        on_key(b"a", get(2, Some("1"), (20, 30))),
        on_key(b"b", put(1, "1", (0, 10))),
        on_key(b"b", put(1, "2", (20, 30))),
        on_key(b"b", get(2, Some("1"), (40, 50))),
    ]);
    match result {
        CheckResult::Violation { key, .. } => assert_eq!(key, b"b", "the violation is on key b"),
        other => panic!("expected a violation on key b, got: {other}"),
    }
}

#[test]
fn exhausted_search_budget_is_inconclusive_not_a_verdict() {
    let events = simulate(&Simulation::default(), None, random_register_workload(40));
    let history: History = events.into_iter().collect();
    let result = check_with(
        &history,
        &None,
        CheckOptions {
            max_states_per_key: 20,
        },
    );
    assert!(
        matches!(&result, CheckResult::Inconclusive { key, .. } if key == KEY),
        "a search stopped by its budget must say so: {result}"
    );
}

#[test]
#[should_panic(expected = "malformed history event")]
fn response_that_does_not_answer_its_op_is_rejected() {
    History::new().push(completed(1, Op::Get, Response::Written, (0, 10)));
}

#[test]
#[should_panic(expected = "malformed history event")]
fn completion_before_invocation_is_rejected() {
    History::new().push(put(1, "v1", (10, 5)));
}

// ---------------------------------------------------------------------------------------------
// Recorder

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_history_of_concurrent_tasks_on_an_atomic_store_is_linearizable() {
    let recorder = Arc::new(Recorder::new());
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let tasks: Vec<_> = (0..8u64)
        .map(|client| {
            let (recorder, store) = (Arc::clone(&recorder), Arc::clone(&store));
            tokio::spawn(async move {
                for step in 0..100u64 {
                    let key = [b'a' + (step % 3) as u8];
                    let op = match (client + step) % 4 {
                        0 => Op::Put(format!("{client}-{step}").into_bytes()),
                        1 => Op::Delete,
                        _ => Op::Get,
                    };
                    let invocation = recorder.invoke(client, key, op.clone());
                    tokio::task::yield_now().await;
                    let response = apply_to_store(&mut store.lock().unwrap(), &key, &op);
                    tokio::task::yield_now().await;
                    recorder.complete(invocation, Outcome::Ok(response));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task panicked");
    }
    // A request whose task was cancelled before it heard back.
    drop(recorder.invoke(99, *b"a", put_op("lost")));

    let history = recorder.history();
    let lost = history.events().last().expect("just recorded");
    assert_eq!(
        (lost.complete_ns, &lost.outcome),
        (None, &Outcome::Unknown),
        "a dropped invocation is unknown"
    );
    let result = check(&history, &None);
    assert_eq!(
        result,
        CheckResult::Linearizable {
            ops_checked: 800 + 1
        },
        "{result}"
    );
}

#[test]
fn recorder_history_exposes_a_replica_serving_stale_reads() {
    let recorder = Recorder::new();
    let mut leader = HashMap::new();
    let mut leader_before_each_write = Vec::new();
    for (client, written) in [(1, "v1"), (2, "v2")] {
        let op = put_op(written);
        let invocation = recorder.invoke(client, KEY, op.clone());
        leader_before_each_write.push(leader.clone());
        let response = apply_to_store(&mut leader, KEY, &op);
        recorder.complete(invocation, Outcome::Ok(response));
    }
    // The replica has not applied the last write.
    let mut lagging_replica = leader_before_each_write.pop().expect("two writes");
    let invocation = recorder.invoke(3, KEY, Op::Get);
    let response = apply_to_store(&mut lagging_replica, KEY, &Op::Get);
    recorder.complete(invocation, Outcome::Ok(response));

    let result = check(&recorder.history(), &None);
    assert!(
        matches!(result, CheckResult::Violation { .. }),
        "a stale read must be caught: {result}"
    );
}

fn apply_to_store(store: &mut HashMap<Vec<u8>, Vec<u8>>, key: &[u8], op: &Op) -> Response {
    let mut register = store.remove(key);
    let response = apply(&mut register, op);
    if let Some(value) = register {
        store.insert(key.to_vec(), value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Simulated histories

#[test]
fn simulated_register_history_is_linearizable_and_a_corrupted_read_is_not() {
    let simulation = Simulation {
        clients: 8,
        ..Simulation::default()
    };
    let events = simulate(&simulation, None, random_register_workload(150));
    let unknown = events
        .iter()
        .filter(|event| event.outcome == Outcome::Unknown)
        .count();
    assert!(
        unknown > 0,
        "the simulation should exercise unknown outcomes"
    );

    let result = check(&events.iter().cloned().collect(), &None);
    assert!(
        result.is_linearizable(),
        "a true atomic register's history was rejected: {result}"
    );

    let phantom = corrupt_a_read(&events, |_, _| Some(value("never-written")));
    let result = check(&phantom.into_iter().collect(), &None);
    assert!(
        matches!(result, CheckResult::Violation { .. }),
        "a read of a value never written must be a violation: {result}"
    );

    let stale = corrupt_a_read(&events, stale_value_for);
    let result = check(&stale.into_iter().collect(), &None);
    assert!(
        !result.is_linearizable(),
        "a stale read must not be accepted: {result}"
    );
    assert!(
        matches!(result, CheckResult::Violation { .. }),
        "expected a definite violation: {result}"
    );
}

#[test]
fn cas_counter_with_retries_is_linearizable_and_a_double_increment_is_not() {
    let faulty = Simulation {
        clients: 6,
        ..Simulation::default()
    };
    let events = simulate(&faulty, None, cas_counter_workload(15));
    let result = check(&events.iter().cloned().collect(), &None);
    assert!(
        result.is_linearizable(),
        "a correct CAS counter history was rejected: {result}"
    );

    let fault_free = Simulation {
        unknown_probability: 0.0,
        failed_probability: 0.0,
        ..faulty
    };
    let mut events = simulate(&fault_free, None, cas_counter_workload(15));
    let result = check(&events.iter().cloned().collect(), &None);
    assert!(
        result.is_linearizable(),
        "a correct CAS counter history was rejected: {result}"
    );

    // Flip one CAS that lost a race into a win: two CAS(k -> k+1) now both succeed.
    let won = |event: &Event| event.outcome == Outcome::Ok(Response::CasResult(true));
    let lost = events
        .iter()
        .position(|event| {
            event.outcome == Outcome::Ok(Response::CasResult(false))
                && events
                    .iter()
                    .any(|other| won(other) && other.op == event.op)
        })
        .expect("six clients incrementing one counter should lose some CAS races");
    events[lost].outcome = Outcome::Ok(Response::CasResult(true));
    let result = check(&events.into_iter().collect(), &None);
    assert!(
        matches!(result, CheckResult::Violation { .. }),
        "two successful CAS from the same counter value must be a violation: {result}"
    );
}

#[test]
fn two_thousand_operations_on_one_key_with_eight_clients_check_quickly() {
    let simulation = Simulation {
        clients: 8,
        seed: 7,
        ..Simulation::default()
    };
    let events = simulate(&simulation, None, random_register_workload(250));
    assert_eq!(events.len(), 2000);
    let started = Instant::now();
    let result = check(&events.into_iter().collect(), &None);
    eprintln!(
        "checked 2000 operations in {:?}: {result}",
        started.elapsed()
    );
    assert!(
        result.is_linearizable(),
        "a true atomic register's history was rejected: {result}"
    );
}

#[test]
fn simulated_histories_with_many_unknown_outcomes_check_exactly() {
    let simulation = Simulation {
        clients: 8,
        unknown_probability: 0.15,
        seed: 3,
        ..Simulation::default()
    };
    let events = simulate(&simulation, None, random_register_workload(100));
    let result = check(&events.iter().cloned().collect(), &None);
    assert!(
        result.is_linearizable(),
        "a true atomic register's history was rejected: {result}"
    );

    let stale = corrupt_a_read(&events, stale_value_for);
    let result = check(&stale.into_iter().collect(), &None);
    assert!(
        matches!(result, CheckResult::Violation { .. }),
        "a stale read must be a violation: {result}"
    );
}

#[test]
fn simulated_histories_from_many_seeds_are_linearizable() {
    for seed in 0..30 {
        let simulation = Simulation {
            seed,
            clients: 5,
            unknown_probability: 0.15,
            failed_probability: 0.05,
            ..Simulation::default()
        };
        let events = simulate(&simulation, None, random_register_workload(40));
        let result = check(&events.into_iter().collect(), &None);
        assert!(
            result.is_linearizable(),
            "seed {seed}: a true atomic register's history was rejected: {result}"
        );

        let events = simulate(&simulation, None, cas_counter_workload(6));
        let result = check(&events.into_iter().collect(), &None);
        assert!(
            result.is_linearizable(),
            "seed {seed}: a correct CAS counter history was rejected: {result}"
        );
    }
}

#[test]
fn checker_agrees_with_brute_force_on_small_random_histories() {
    let mut verdicts = [0usize; 2];
    for seed in 0..3000 {
        let simulation = Simulation {
            seed,
            clients: 2 + seed % 3,
            unknown_probability: 0.2,
            failed_probability: 0.1,
            ..Simulation::default()
        };
        let mut events = simulate(&simulation, None, tiny_workload(3));
        let mut rng = StdRng::seed_from_u64(seed ^ 0xBAD);
        for _ in 0..rng.random_range(0..=3) {
            corrupt_randomly(&mut events, &mut rng);
        }
        let expected = brute_force_linearizable(&events, &None);
        let history: History = events.iter().cloned().collect();
        let result = check(&history, &None);
        assert!(
            !matches!(result, CheckResult::Inconclusive { .. }) && result.is_linearizable() == expected,
            "seed {seed}: brute force says linearizable = {expected}, checker says {result}\nhistory: {events:#?}"
        );
        verdicts[usize::from(expected)] += 1;
    }
    assert!(
        verdicts.iter().all(|&count| count > 300),
        "both verdicts should be well represented: {verdicts:?}"
    );
}

/// Up to `ops_per_client` operations per client over the values "a" and "b", so values repeat
/// and unknown operations have interchangeable twins.
fn tiny_workload(
    ops_per_client: usize,
) -> impl FnMut(u64, Option<&Event>, &mut StdRng) -> Option<Op> {
    let mut issued: HashMap<u64, usize> = HashMap::new();
    move |client, _, rng| {
        let count = issued.entry(client).or_default();
        *count += 1;
        if *count > ops_per_client {
            return None;
        }
        let op = match rng.random_range(0..4) {
            0 => Op::Get,
            1 => Op::Put(any_tiny_value(rng).unwrap_or_else(|| b"a".to_vec())),
            2 => Op::Delete,
            _ => Op::Cas {
                expected: any_tiny_value(rng),
                new: any_tiny_value(rng),
            },
        };
        Some(op)
    }
}

fn any_tiny_value(rng: &mut StdRng) -> Value {
    [None, value("a"), value("b")][rng.random_range(0..3)].clone()
}

/// Changes one thing the clients were told: a value read, a CAS result, or an acknowledged
/// write turned into a failed or unknown one.
fn corrupt_randomly(events: &mut [Event], rng: &mut StdRng) {
    let index = rng.random_range(0..events.len());
    let event = &mut events[index];
    event.outcome = match &event.outcome {
        Outcome::Ok(Response::Read(_)) => Outcome::Ok(Response::Read(any_tiny_value(rng))),
        Outcome::Ok(Response::CasResult(swapped)) => Outcome::Ok(Response::CasResult(!swapped)),
        Outcome::Ok(Response::Written) if rng.random_bool(0.5) => Outcome::Failed,
        Outcome::Ok(Response::Written) => {
            event.complete_ns = None;
            Outcome::Unknown
        }
        other => other.clone(),
    };
}

/// Linearizability by exhaustive enumeration of orders, straight from the model's definition;
/// only for a handful of operations on one key.
fn brute_force_linearizable(events: &[Event], initial: &Value) -> bool {
    let ops: Vec<&Event> = events
        .iter()
        .filter(|event| {
            let dropped = matches!(
                (&event.op, &event.outcome),
                (_, Outcome::Failed) | (Op::Get, Outcome::Unknown)
            );
            !dropped
        })
        .collect();
    fn extend(ops: &[&Event], placed: &mut Vec<bool>, register: &Value) -> bool {
        let all_known_placed = ops
            .iter()
            .zip(placed.iter())
            .all(|(op, &placed)| placed || op.complete_ns.is_none());
        if all_known_placed {
            return true;
        }
        for next in 0..ops.len() {
            let must_wait = (0..ops.len()).any(|other| {
                !placed[other]
                    && ops[other]
                        .complete_ns
                        .is_some_and(|done| done < ops[next].invoke_ns)
            });
            if placed[next] || must_wait {
                continue;
            }
            let Some(after) = take_effect(ops[next], register) else {
                continue;
            };
            placed[next] = true;
            let found = extend(ops, placed, &after);
            placed[next] = false;
            if found {
                return true;
            }
        }
        false
    }
    extend(&ops, &mut vec![false; ops.len()], initial)
}

/// The register after `event` takes effect on `register`, if it can.
fn take_effect(event: &Event, register: &Value) -> Option<Value> {
    match (&event.op, &event.outcome) {
        (Op::Get, Outcome::Ok(Response::Read(read))) => {
            (read == register).then(|| register.clone())
        }
        (Op::Put(written), _) => Some(Some(written.clone())),
        (Op::Delete, _) => Some(None),
        (Op::Cas { expected, .. }, Outcome::Ok(Response::CasResult(false))) => {
            (expected != register).then(|| register.clone())
        }
        (Op::Cas { expected, new }, _) => (expected == register).then(|| new.clone()),
        (op, outcome) => unreachable!("{op:?} answered {outcome:?} is dropped before the search"),
    }
}

/// Replaces the response of one read in the second half of `events` (the first for which
/// `replacement` offers a value) and returns the corrupted history.
fn corrupt_a_read(
    events: &[Event],
    replacement: impl Fn(&[Event], usize) -> Option<Value>,
) -> Vec<Event> {
    let mut events = events.to_vec();
    let read = (events.len() / 2..events.len())
        .find_map(|index| {
            let is_read = matches!(events[index].outcome, Outcome::Ok(Response::Read(_)));
            is_read
                .then(|| replacement(&events, index).map(|value| (index, value)))
                .flatten()
        })
        .expect("the simulation should produce a read to corrupt");
    events[read.0].outcome = Outcome::Ok(Response::Read(read.1));
    events
}

/// A value the read at `read` cannot legitimately return: its only write completed before
/// another acknowledged put was invoked, which itself completed before the read was invoked.
/// (Every value the workload writes is unique.)
fn stale_value_for(events: &[Event], read: usize) -> Option<Value> {
    let acknowledged_puts = || {
        events.iter().filter_map(
            |event| match (&event.op, &event.outcome, event.complete_ns) {
                (Op::Put(written), Outcome::Ok(_), Some(complete_ns)) => {
                    Some((written, event.invoke_ns, complete_ns))
                }
                _ => None,
            },
        )
    };
    let read_invoke_ns = events[read].invoke_ns;
    acknowledged_puts()
        .filter(|&(_, _, complete_ns)| complete_ns < read_invoke_ns)
        .find_map(|(_, overwrite_invoke_ns, _)| {
            acknowledged_puts().find(|&(_, _, complete_ns)| complete_ns < overwrite_invoke_ns)
        })
        .map(|(written, _, _)| Some(written.clone()))
}

/// A discrete-event simulation of clients on one atomic register: every operation takes effect
/// at one instant inside its interval, so the history it produces is linearizable by
/// construction. Some operations time out (their effect lands at a random later moment, or
/// never) or fail (no effect).
#[derive(Clone, Copy)]
struct Simulation {
    seed: u64,
    clients: u64,
    max_latency_ns: u64,
    unknown_probability: f64,
    failed_probability: f64,
}

impl Default for Simulation {
    fn default() -> Self {
        Self {
            seed: 42,
            clients: 4,
            max_latency_ns: 1_000,
            unknown_probability: 0.03,
            failed_probability: 0.03,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Invoke { client: u64 },
    TakeEffect { event: usize },
    Complete { event: usize },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Acknowledged,
    TimedOut,
    Rejected,
}

/// Runs `simulation` starting from `initial`; each client asks `next_op` for its next
/// operation, given its previous event, until it answers `None`.
fn simulate(
    simulation: &Simulation,
    initial: Value,
    mut next_op: impl FnMut(u64, Option<&Event>, &mut StdRng) -> Option<Op>,
) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(simulation.seed);
    let latency = simulation.max_latency_ns;
    let mut register = initial;
    let mut agenda = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut schedule = |agenda: &mut BinaryHeap<_>, at_ns: u64, action: Action| {
        sequence += 1;
        agenda.push(Reverse((at_ns, sequence, action)));
    };
    for client in 0..simulation.clients {
        schedule(
            &mut agenda,
            rng.random_range(0..latency),
            Action::Invoke { client },
        );
    }
    let mut events: Vec<Event> = Vec::new();
    let mut fates: Vec<Fate> = Vec::new();
    let mut responses: Vec<Option<Response>> = Vec::new();
    let mut last_event_of: HashMap<u64, usize> = HashMap::new();
    while let Some(Reverse((now_ns, _, action))) = agenda.pop() {
        match action {
            Action::Invoke { client } => {
                let previous = last_event_of.get(&client).map(|&index| &events[index]);
                let Some(op) = next_op(client, previous, &mut rng) else {
                    continue;
                };
                let event = events.len();
                last_event_of.insert(client, event);
                events.push(Event {
                    client,
                    key: KEY.to_vec(),
                    op,
                    invoke_ns: now_ns,
                    complete_ns: None,
                    outcome: Outcome::Unknown,
                });
                responses.push(None);
                let effect_ns = now_ns + rng.random_range(0..=latency);
                let complete_ns = effect_ns + rng.random_range(1..=latency);
                let roll: f64 = rng.random();
                let fate = if roll < simulation.failed_probability {
                    Fate::Rejected
                } else if roll < simulation.failed_probability + simulation.unknown_probability {
                    Fate::TimedOut
                } else {
                    Fate::Acknowledged
                };
                fates.push(fate);
                match fate {
                    Fate::Acknowledged => {
                        schedule(&mut agenda, effect_ns, Action::TakeEffect { event })
                    }
                    Fate::TimedOut if rng.random_bool(0.5) => {
                        let late_effect_ns = now_ns + rng.random_range(0..=20 * latency);
                        schedule(&mut agenda, late_effect_ns, Action::TakeEffect { event });
                    }
                    Fate::TimedOut | Fate::Rejected => {}
                }
                schedule(&mut agenda, complete_ns, Action::Complete { event });
            }
            Action::TakeEffect { event } => {
                responses[event] = Some(apply(&mut register, &events[event].op))
            }
            Action::Complete { event } => {
                let record = &mut events[event];
                (record.complete_ns, record.outcome) = match fates[event] {
                    Fate::Acknowledged => {
                        let response = responses[event]
                            .take()
                            .expect("takes effect before completing");
                        (Some(now_ns), Outcome::Ok(response))
                    }
                    Fate::TimedOut => (None, Outcome::Unknown),
                    Fate::Rejected => (Some(now_ns), Outcome::Failed),
                };
                let client = record.client;
                schedule(
                    &mut agenda,
                    now_ns + rng.random_range(0..=latency),
                    Action::Invoke { client },
                );
            }
        }
    }
    events
}

/// The atomic register the simulation and the in-memory stores run.
fn apply(register: &mut Value, op: &Op) -> Response {
    match op {
        Op::Get => Response::Read(register.clone()),
        Op::Put(written) => {
            *register = Some(written.clone());
            Response::Written
        }
        Op::Delete => {
            *register = None;
            Response::Written
        }
        Op::Cas { expected, new } => {
            let swapped = register == expected;
            if swapped {
                *register = new.clone();
            }
            Response::CasResult(swapped)
        }
    }
}

/// `ops_per_client` random gets, puts, deletes and CAS per client. Every value written is
/// unique; a CAS usually expects what its client last read, so many of them succeed.
fn random_register_workload(
    ops_per_client: usize,
) -> impl FnMut(u64, Option<&Event>, &mut StdRng) -> Option<Op> {
    let mut issued: HashMap<u64, usize> = HashMap::new();
    move |client, previous, rng| {
        let count = issued.entry(client).or_default();
        if *count == ops_per_client {
            return None;
        }
        *count += 1;
        let fresh = format!("c{client}-{count}").into_bytes();
        let op = match rng.random_range(0..10) {
            0..=3 => Op::Get,
            4..=6 => Op::Put(fresh),
            7 => Op::Delete,
            _ => {
                let expected = match previous.map(|event| &event.outcome) {
                    Some(Outcome::Ok(Response::Read(read))) if rng.random_bool(0.8) => read.clone(),
                    _ => None,
                };
                let new = rng.random_bool(0.8).then_some(fresh);
                Op::Cas { expected, new }
            }
        };
        Some(op)
    }
}

/// Each client reads the counter and CASes it one higher, retrying after any lost race or
/// uncertain outcome, until it has made `increments_per_client` increments. Absent reads as 0.
fn cas_counter_workload(
    increments_per_client: usize,
) -> impl FnMut(u64, Option<&Event>, &mut StdRng) -> Option<Op> {
    let mut increments: HashMap<u64, usize> = HashMap::new();
    move |client, previous, _| {
        let Some(previous) = previous else {
            return Some(Op::Get);
        };
        match (&previous.op, &previous.outcome) {
            (Op::Get, Outcome::Ok(Response::Read(read))) => {
                let counter: u64 = read.as_deref().map_or(0, |bytes| {
                    std::str::from_utf8(bytes)
                        .expect("decimal")
                        .parse()
                        .expect("decimal")
                });
                Some(Op::Cas {
                    expected: read.clone(),
                    new: Some((counter + 1).to_string().into_bytes()),
                })
            }
            (Op::Cas { .. }, Outcome::Ok(Response::CasResult(true))) => {
                let made = increments.entry(client).or_default();
                *made += 1;
                (*made < increments_per_client).then_some(Op::Get)
            }
            _ => Some(Op::Get),
        }
    }
}
