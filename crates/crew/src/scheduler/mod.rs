//! The thread backend's scheduler: where queued tasks wait ([`queues`]) and when
//! idle workers sleep and wake ([`sleep`], protocol and proof in `sleep.md`
//! beside this file).
//!
//! The boundary to the rest of crew is narrow: the pool pushes jobs with
//! [`queues::Injectors::push`] and then calls [`sleep::Sleep::notify_work`]; a
//! worker asks [`queues::Injectors::find`] and, finding nothing, searches and parks
//! through [`sleep::Sleep`]. Nothing here knows about tasks' types or results.

pub(crate) mod queues;
pub(crate) mod sleep;
pub(crate) mod spin;
