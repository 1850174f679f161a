//! Integration tests of the reference cloud, one binary: real servers on 127.0.0.1:0 with
//! real HTTP clients and runtimes.

mod collector;
mod connections;
mod fleet;
mod improvement;
mod outage;
mod pg;
mod postgres;
mod repository;
