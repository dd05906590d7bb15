//! placecast-load: the load tester for placecast (binary `placecast-load`) and the plain tokio
//! baseline broadcaster it is compared with (binary `placecast-baseline`).
//!
//! Layout: wire formats ([`ws`], [`batch`]), system calls ([`sys`], [`procfs`], [`signals`]),
//! the lean epoll client engine ([`engine`]) and its process fan-out ([`fleet`], [`share`]),
//! load agents on other hosts ([`agent`], [`coordinator`], their protocol [`link`]), the HTTP
//! placement [`driver`], measurement ([`hist`], [`sendtable`], [`merge`]), the [`scenario`]s,
//! their [`report`] and [`compare`]; the synthetic event [`trace`] and the session scenario's day
//! ([`dayplan`], [`day`]); and the [`baseline`] server. The two client engines ([`engine`],
//! [`day`]) share their frame reader ([`wsread`]) and what a client does with a batch
//! ([`delivery`]).

pub mod abuse;
pub mod addrs;
pub mod agent;
pub mod baseline;
pub mod batch;
pub mod cli;
pub mod compare;
pub mod coordinator;
pub mod day;
pub mod dayplan;
pub mod delivery;
pub mod driver;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod fuzz;
pub mod hist;
pub mod http;
pub mod link;
pub mod merge;
pub mod pow;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod sendtable;
pub mod session;
pub mod share;
pub mod signals;
pub mod sys;
pub mod trace;
pub mod ws;
pub mod wsplace;
pub mod wsread;
