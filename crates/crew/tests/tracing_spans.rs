//! With the `tracing` feature, a subscriber sees a span per worker and per task,
//! and the task and worker lifecycle events (run by `.ci/run` with
//! `--features tracing`).
#![cfg(feature = "tracing")]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A minimal subscriber that records span names and event messages.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.spans
            .lock()
            .unwrap()
            .push(span.metadata().name().to_owned());
        Id::from_u64(self.next.fetch_add(1, Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.events.lock().unwrap().push(message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn task_and_worker_spans_and_events_reach_the_subscriber() {
    let capture = Capture::default();
    // Global, so the worker threads report to it too.
    tracing::subscriber::set_global_default(capture.clone()).unwrap();
    let pool = crew::Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.spawn(|| 2 + 2).join().unwrap(), 4);
    pool.shutdown();

    let spans = capture.spans.lock().unwrap().clone();
    assert!(spans.iter().any(|s| s == "crew.worker"), "{spans:?}");
    assert!(spans.iter().any(|s| s == "crew.task"), "{spans:?}");
    let events = capture.events.lock().unwrap().clone();
    for expected in [
        "task queued",
        "task finished",
        "worker started",
        "worker exited",
    ] {
        assert!(
            events.iter().any(|e| e.starts_with(expected)),
            "no {expected:?} in {events:?}"
        );
    }
    let finished = events
        .iter()
        .find(|e| e.starts_with("task finished"))
        .unwrap();
    assert!(finished.contains("outcome=Completed"), "{finished}");
    let exited = events
        .iter()
        .find(|e| e.starts_with("worker exited"))
        .unwrap();
    assert!(exited.contains("reason=Shutdown"), "{exited}");
}
