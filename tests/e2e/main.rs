//! End-to-end tests: real clients against a real `touchlake` server process.

mod badinput;
mod catalog;
mod databases;
mod demo;
mod formatting;
mod ingest;
mod plans;
mod protocol;
mod psql;
mod readme;
mod sources;
