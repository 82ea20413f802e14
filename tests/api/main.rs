//! Integration tests: real servers on port 0, real SQLite files and
//! PostgreSQL databases, real gRPC clients.

mod agent;
mod archive;
mod auth;
mod backup;
mod bad_input;
mod bad_input_table;
mod checkpoints;
mod cli;
mod client_settings;
mod concurrency;
mod connections;
mod console;
mod docs;
mod helpers;
mod history;
mod http;
mod http_events;
mod http_protocol;
mod identity;
mod lifecycle;
mod log_tree;
mod login;
mod malformed;
mod observability;
mod oidc;
mod operations;
mod races;

mod requirements;
mod rollout_binary;
mod rollouts;
mod runtime_library;
mod runtimes;
mod schedules;
mod signing;
mod subscriptions;
mod sync;
mod watch;
mod webhooks;
mod witness;
mod witnessing;
