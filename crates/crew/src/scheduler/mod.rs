//! The thread backend's scheduler: where queued tasks wait ([`queues`]) and when
//! idle workers sleep and wake ([`sleep`], protocol and proof in `sleep.md`
//! beside this file).
//!
//! The boundary to the rest of crew is narrow: the pool pushes jobs with
//! [`queues::Injectors::push`] and then calls [`sleep::Sleep::notify_work`]; a
//! worker asks [`queues::Injectors::find`] and, finding nothing, searches and parks
//! through [`sleep::Sleep`]. Nothing here knows about tasks' types or results.
//!
//! [`deadlines`] is the one piece both backends use: the heap of deadlines of
//! tasks that may still be queued, which each backend's monitor thread keeps.

pub(crate) mod deadlines;
pub(crate) mod queues;
pub(crate) mod sleep;
pub(crate) mod spin;
