//! The reference pages of the book, generated from the code and checked
//! fresh: every command and flag (from the clap definitions, also as man
//! pages), every setting with its default and variable (from the settings
//! and their doc comments), every metric (from live scrapes of the server's
//! and the agent's registries), every status and exit code (from the
//! mappings, in `status_codes`). A stale page fails here;
//! `UPDATE_REFERENCE=1 cargo test --test api docs::` writes them anew.
//!
//! Beside them: the links of the book resolve, every runnable shell block
//! of every page runs (`blocks`), the guides' first programs run as pasted
//! against a server with authentication on (`quick_starts`), and the
//! README's map leads to the answers readers come for (`map`).

mod benchmarks;
pub(crate) mod blocks;
mod map;
mod quick_starts;
mod status_codes;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::helpers::{Backend, TestDatabase, spawn_on};

/// Where the generated pages live.
fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/reference")
}

/// Compares `generated` with the committed file, or writes it when asked.
fn fresh(path: &Path, generated: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_REFERENCE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, generated).unwrap();
        return Ok(());
    }
    match std::fs::read_to_string(path) {
        Ok(committed) if committed == generated => Ok(()),
        _ => Err(format!(
            "{} is stale",
            path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap_or(path)
                .display()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_references_are_fresh() {
    let mut stale = Vec::new();
    let mut check = |path: PathBuf, generated: String| {
        if let Err(error) = fresh(&path, &generated) {
            stale.push(error);
        }
    };
    let command = policyhub::cli::Cli::command();
    check(reference_dir().join("cli.md"), cli_page(&command));
    for (name, page) in man_pages(&command) {
        check(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs/man")
                .join(name),
            page,
        );
    }
    check(
        reference_dir().join("configuration.md"),
        configuration_page(),
    );
    check(reference_dir().join("metrics.md"), metrics_page().await);
    check(reference_dir().join("api.md"), api_page());
    check(reference_dir().join("http.md"), http_page());
    check(
        reference_dir().join("status-codes.md"),
        status_codes::status_codes_page(),
    );
    assert!(
        stale.is_empty(),
        "{}: run `UPDATE_REFERENCE=1 cargo test --test api docs::` and commit the pages",
        stale.join(", ")
    );
}

/// Every command, its usage, what it does and each argument.
fn cli_page(root: &clap::Command) -> String {
    let mut page = String::from(
        "# Command line\n\n<!-- Generated from the clap definitions by the test \
         `docs::the_generated_references_are_fresh`: do not edit. -->\n\n\
         Every command of `policyhub`, with its flags. Flags come before the \
         environment (`POLICYHUB_SERVER`, …), which comes before the configuration \
         file, as with kubectl. Each command is also a man page, `man policyhub-NAME`, \
         in `docs/man`.\n",
    );
    let mut commands = Vec::new();
    walk(root, "policyhub".to_owned(), &mut commands);
    for (path, command) in commands {
        let _ = write!(page, "\n## `{path}`\n\n");
        if let Some(about) = command.get_long_about().or(command.get_about()) {
            let _ = writeln!(page, "{about}\n");
        }
        let usage = command.clone().bin_name(&path).render_usage().to_string();
        let _ = writeln!(page, "```text\n{}\n```", usage.trim());
        let arguments: Vec<&clap::Arg> = command
            .get_arguments()
            .filter(|argument| !argument.is_hide_set())
            .collect();
        if arguments.is_empty() {
            continue;
        }
        page.push_str("\n| argument | meaning |\n|---|---|\n");
        for argument in arguments {
            let _ = writeln!(
                page,
                "| {} | {} |",
                argument_name(argument),
                one_line(&argument_help(argument))
            );
        }
    }
    page
}

/// Every visible command below `command`, with its full name.
fn walk<'a>(command: &'a clap::Command, path: String, into: &mut Vec<(String, &'a clap::Command)>) {
    into.push((path.clone(), command));
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        walk(sub, format!("{path} {}", sub.get_name()), into);
    }
}

/// `--flag VALUE`, `-s, --flag`, or `<NAME>` for a positional argument.
fn argument_name(argument: &clap::Arg) -> String {
    let value = argument
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|name| format!("<{name}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", argument.get_id().as_str().to_uppercase()));
    let takes_value = argument.get_action().takes_values();
    match (argument.get_short(), argument.get_long()) {
        (None, None) => format!("`{value}`"),
        (short, Some(long)) => {
            let short = short.map(|short| format!("-{short}, ")).unwrap_or_default();
            let value = if takes_value {
                format!(" {value}")
            } else {
                String::new()
            };
            format!("`{short}--{long}{value}`")
        }
        (Some(short), None) => format!("`-{short}`"),
    }
}

/// An argument's help, with its default and its variable.
fn argument_help(argument: &clap::Arg) -> String {
    let mut help = argument
        .get_long_help()
        .or(argument.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let defaults: Vec<String> = argument
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .filter(|value| !value.is_empty())
        .collect();
    let mut notes = Vec::new();
    if !defaults.is_empty() && argument.get_action().takes_values() && !help.contains("[default:") {
        notes.push(format!("Default: `{}`.", defaults.join(",")));
    }
    if let Some(variable) = argument.get_env()
        && !help.contains("[env:")
    {
        notes.push(format!("Environment: `{}`.", variable.to_string_lossy()));
    }
    if !notes.is_empty() {
        if !help.is_empty() && !help.ends_with(['.', ']']) {
            help.push('.');
        }
        help.push(' ');
        help.push_str(&notes.join(" "));
    }
    help.trim().to_owned()
}

/// Text fit for one cell of a table.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A man page per command (`policyhub.1`, `policyhub-publish.1`, …).
fn man_pages(root: &clap::Command) -> Vec<(String, String)> {
    let mut commands = Vec::new();
    walk(root, "policyhub".to_owned(), &mut commands);
    commands
        .into_iter()
        .map(|(path, command)| {
            let name = path.replace(' ', "-");
            let command = command.clone().bin_name(&path);
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .title(name.clone())
                .date("")
                .render(&mut page)
                .unwrap();
            (format!("{name}.1"), String::from_utf8(page).unwrap())
        })
        .collect()
}

/// Every setting: its key, variable, default and what it does, read from
/// the settings' defaults and the doc comments of their fields.
fn configuration_page() -> String {
    let docs = field_docs();
    let defaults = serde_json::to_value(policyhub::config::Settings::default()).unwrap();
    let mut rows = Vec::new();
    settings_rows("Settings", "", &defaults, &docs, &mut rows);
    let mut page = String::from(
        "# Configuration\n\n<!-- Generated from src/config by the test \
         `docs::the_generated_references_are_fresh`: do not edit. -->\n\n\
         Every setting, in the order of the settings file (`policyhub.toml`, TOML, \
         `--config`). Each is also read from its environment variable, which \
         overrides the file, and flags override both. Durations carry their unit \
         (`500ms`, `10s`, `5m`, `7days`). A `__` in a variable's name separates a \
         section from its key; an unknown section or key, or a value that does not \
         parse, is refused at start, naming the variable.\n\n\
         | setting | environment variable | default | meaning |\n|---|---|---|---|\n",
    );
    for (key, default, doc) in rows {
        let variable = |key: &str| format!("POLICYHUB_{}", key.replace('.', "__").to_uppercase());
        // An entry's key is set with its list's variable, written inline
        // (`[{issuer = "https://…", audiences = ["policyhub"]}]`).
        let variable = match key.split_once("[].") {
            Some((list, _)) => format!("in `{}`", variable(list)),
            None => format!("`{}`", variable(&key)),
        };
        let _ = writeln!(
            page,
            "| `{key}` | {variable} | {default} | {} |",
            one_line(&doc)
        );
    }
    page
}

/// The rows of the struct `name` below `prefix`: a nested settings struct
/// is walked, anything else is one row.
fn settings_rows(
    name: &str,
    prefix: &str,
    defaults: &serde_json::Value,
    docs: &BTreeMap<String, Vec<(String, String, String)>>,
    rows: &mut Vec<(String, String, String)>,
) {
    for (field, type_name, doc) in docs.get(name).into_iter().flatten() {
        let key = format!("{prefix}{field}");
        let default = &defaults[field.as_str()];
        if docs.contains_key(type_name) {
            // A list of tables (`[[auth.issuers]]`) lists the keys of one
            // entry with an entry's defaults.
            if default.is_array() {
                let entry = table_defaults(type_name);
                rows.push((
                    key.clone(),
                    "empty".to_owned(),
                    format!("{doc} Each entry:"),
                ));
                settings_rows(type_name, &format!("{key}[]."), &entry, docs, rows);
                continue;
            }
            // An unset section (`tls`) lists its keys as unset.
            settings_rows(type_name, &format!("{key}."), default, docs, rows);
            continue;
        }
        let default = match default {
            serde_json::Value::Null => "unset".to_owned(),
            serde_json::Value::String(text) if text.is_empty() => "empty".to_owned(),
            serde_json::Value::String(text) => format!("`{text}`"),
            serde_json::Value::Object(map) if map.is_empty() => "empty".to_owned(),
            serde_json::Value::Array(items) if items.is_empty() => "empty".to_owned(),
            other => format!("`{other}`"),
        };
        rows.push((key, default, doc.clone()));
    }
}

/// The defaults of one entry of a list of tables.
fn table_defaults(type_name: &str) -> serde_json::Value {
    match type_name {
        "IssuerSettings" => {
            serde_json::to_value(policyhub::config::IssuerSettings::default()).unwrap()
        }
        // A witness has no default url or key: both are required.
        "WitnessSettings" => serde_json::json!({"name": null, "url": "", "key": ""}),
        other => panic!("no defaults known for an entry of {other}"),
    }
}

/// The fields of every struct of `src/config`: name, type (the last path
/// segment, through `Option`), doc comment.
fn field_docs() -> BTreeMap<String, Vec<(String, String, String)>> {
    let mut structs = BTreeMap::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    for entry in std::fs::read_dir(dir).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let file = syn::parse_file(&source).unwrap();
        for item in file.items {
            let syn::Item::Struct(item) = item else {
                continue;
            };
            let syn::Fields::Named(fields) = item.fields else {
                continue;
            };
            let fields = fields
                .named
                .iter()
                .filter(|field| matches!(field.vis, syn::Visibility::Public(_)))
                .map(|field| {
                    (
                        field.ident.as_ref().unwrap().to_string(),
                        type_name(&field.ty),
                        doc_comment(&field.attrs),
                    )
                })
                .collect();
            structs.insert(item.ident.to_string(), fields);
        }
    }
    structs
}

/// The last segment of a type's path, through `Option<…>` and `Vec<…>`.
fn type_name(ty: &syn::Type) -> String {
    let syn::Type::Path(path) = ty else {
        return String::new();
    };
    let last = path.path.segments.last().unwrap();
    if (last.ident == "Option" || last.ident == "Vec")
        && let syn::PathArguments::AngleBracketed(arguments) = &last.arguments
        && let Some(syn::GenericArgument::Type(inner)) = arguments.args.first()
    {
        return type_name(inner);
    }
    last.ident.to_string()
}

/// The `///` lines of a field, joined.
fn doc_comment(attributes: &[syn::Attribute]) -> String {
    attributes
        .iter()
        .filter_map(|attribute| match &attribute.meta {
            syn::Meta::NameValue(pair) if pair.path.is_ident("doc") => match &pair.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(text),
                    ..
                }) => Some(text.value().trim().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every metric of the server and of the agent: every family their
/// registries hold, as registered (a family with labels has no series, and
/// so no `# HELP` or `# TYPE` in a scrape, until its first observation),
/// and the standard `process_*` metrics from scrapes.
async fn metrics_page() -> String {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let address = app.metrics_address.expect("the test server serves metrics");
    let server = scrape(address).await;
    let agent = scrape_agent(&app).await;
    let mut page = String::from(
        "# Metrics\n\n<!-- Generated from the families the server and the agent \
         register and from scrapes of their registries by the test \
         `docs::the_generated_references_are_fresh`: do not edit. -->\n\n\
         Every metric, in the classic text format's names (a counter's series end \
         in `_total`), listed whether it has a series yet or not. Which to alert \
         on, and how to scrape them, is in \
         [Observability](../guides/observability.md).\n\n\
         ## The server\n\n\
         What `policyhub serve` exposes on `metrics_listen` (`/metrics`).\n\n",
    );
    page.push_str(&metrics_table(
        policyhub::metrics::global().families(),
        &server,
    ));
    page.push_str(
        "\n## The agent\n\n\
         What `policyhub agent` exposes on `--metrics-listen` (`/metrics`); the \
         families by namespace have a series per followed namespace, those by port \
         one for `api` and one for `metrics`.\n\n",
    );
    page.push_str(&metrics_table(&policyhub::agent::metric_families(), &agent));
    page
}

/// The metrics reference names every family the server and the agent
/// register, those without a series yet included.
#[test]
fn the_metrics_reference_lists_every_registered_family() {
    let page = std::fs::read_to_string(reference_dir().join("metrics.md")).unwrap();
    let registered = policyhub::metrics::global()
        .families()
        .iter()
        .chain(&policyhub::agent::metric_families())
        .map(|family| classic_name(&family.name, &family.kind))
        .collect::<Vec<_>>();
    let omitted: Vec<&String> = registered
        .iter()
        .filter(|name| !page.contains(&format!("| `{name}` |")))
        .collect();
    assert!(omitted.is_empty(), "the reference omits {omitted:?}");
    assert!(registered.contains(&"policyhub_webhook_deliveries_total".to_owned()));
}

/// The exposition of a `policyhub agent` following a namespace of `app`.
async fn scrape_agent(app: &crate::helpers::TestApp) -> String {
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], crate::helpers::free_port()));
    let mut agent = std::process::Command::new(crate::helpers::policyhub_binary())
        .args(["agent", "--server", &format!("http://{}", app.address)])
        .args(["--namespace", "payments", "--runtime-id", "agent-1"])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", crate::helpers::free_port()),
        ])
        .args(["--metrics-listen", &metrics.to_string()])
        .arg("--cache-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start policyhub agent");
    let mut exposition = String::new();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(metrics).await.is_ok() {
            exposition = scrape(metrics).await;
            // Every family has a series once a state is in force.
            if exposition.contains("# TYPE policyhub_agent_revision ") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        exposition.contains("policyhub_agent_"),
        "the agent never served its metrics"
    );
    exposition
}

/// The metrics of a registry, one row each: the families `registered`, and
/// those of its `exposition` (the `process_*` collector's), which must be
/// the collector's or registered ones.
fn metrics_table(registered: &[policyhub::metrics::FamilyDescription], exposition: &str) -> String {
    let mut metrics: BTreeMap<String, (String, String)> = registered
        .iter()
        .map(|family| {
            (
                family.name.clone(),
                (family.kind.clone(), family.help.clone()),
            )
        })
        .collect();
    let mut scraped: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            scraped.entry(name.to_owned()).or_default().1 = help.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            scraped.entry(name.to_owned()).or_default().0 = kind.to_owned();
        }
    }
    for (name, (kind, help)) in scraped {
        let name = name
            .strip_suffix("_total")
            .filter(|_| kind == "counter")
            .map_or(name.clone(), str::to_owned);
        if metrics.contains_key(&name) {
            continue;
        }
        assert!(
            name.starts_with("process_"),
            "{name} is served but was not registered through metrics::Registrar"
        );
        metrics.insert(name, (kind, help));
    }
    let mut table = String::from("| metric | type | meaning |\n|---|---|---|\n");
    for (name, (kind, help)) in metrics {
        let _ = writeln!(
            table,
            "| `{}` | {kind} | {} |",
            classic_name(&name, &kind),
            one_line(&help)
        );
    }
    table
}

/// A family's name in the classic text format: a counter's ends in
/// `_total`.
fn classic_name(name: &str, kind: &str) -> String {
    if kind == "counter" && !name.ends_with("_total") {
        format!("{name}_total")
    } else {
        name.to_owned()
    }
}

/// The gRPC API: every service and method, message and enum of
/// `policyhub.v1`, with the comments of the protos.
fn api_page() -> String {
    let pool =
        prost_reflect::DescriptorPool::decode(policyhub::grpc::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut page = String::from(
        "# gRPC API\n\n<!-- Generated from the protos by the test \
         `docs::the_generated_references_are_fresh`: do not edit. -->\n\n\
         The services, messages and enums of `policyhub.v1`, with the comments of \
         `proto/policyhub/v1/*.proto`. The server serves reflection, so grpcurl \
         needs no proto file; the HTTP/JSON mapping of each method is in the \
         [HTTP API](http.md).\n",
    );
    let ours = |name: &str| name.starts_with("policyhub.");
    for service in pool.services().filter(|service| ours(service.full_name())) {
        let _ = write!(page, "\n## Service `{}`\n\n", service.full_name());
        for method in service.methods() {
            let streaming = |yes: bool| if yes { "stream " } else { "" };
            let _ = write!(
                page,
                "### `{}`\n\n`rpc {}({}{}) returns ({}{})`\n\n{}\n\n",
                method.name(),
                method.name(),
                streaming(method.is_client_streaming()),
                method.input().name(),
                streaming(method.is_server_streaming()),
                method.output().name(),
                comment(&method.parent_file(), method.path()),
            );
        }
    }
    page.push_str("\n## Messages\n");
    for message in pool
        .all_messages()
        .filter(|message| ours(message.full_name()) && !message.is_map_entry())
    {
        let _ = write!(
            page,
            "\n### `{}`\n\n{}\n\n| field | type | meaning |\n|---|---|---|\n",
            message.name(),
            comment(&message.parent_file(), message.path())
        );
        for field in message.fields() {
            let kind = match field.kind() {
                prost_reflect::Kind::Message(kind) => kind.full_name().to_owned(),
                prost_reflect::Kind::Enum(kind) => kind.full_name().to_owned(),
                other => format!("{other:?}").to_lowercase(),
            };
            let label = if field.is_map() {
                "map "
            } else if field.is_list() {
                "repeated "
            } else {
                ""
            };
            let _ = writeln!(
                page,
                "| `{}` | `{label}{}` | {} |",
                field.name(),
                kind.trim_start_matches("policyhub.v1."),
                one_line(&comment(&field.parent_file(), field.path()))
            );
        }
    }
    page.push_str("\n## Enums\n");
    for kind in pool.all_enums().filter(|kind| ours(kind.full_name())) {
        let _ = write!(
            page,
            "\n### `{}`\n\n{}\n\n| value | meaning |\n|---|---|\n",
            kind.name(),
            comment(&kind.parent_file(), kind.path())
        );
        for value in kind.values() {
            let _ = writeln!(
                page,
                "| `{}` | {} |",
                value.name(),
                one_line(&comment(&value.parent_file(), value.path()))
            );
        }
    }
    page
}

/// The comment before the element at `path` of `file`.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|location| location.path == path))
        .map(|location| {
            location
                .leading_comments()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The HTTP/JSON API: every operation of the OpenAPI document the port
/// serves, with its parameters.
fn http_page() -> String {
    let document: serde_json::Value = serde_json::from_str(policyhub::http::OPENAPI).unwrap();
    let mut page = String::from(
        "# HTTP API\n\n<!-- Generated from the OpenAPI document by the test \
         `docs::the_generated_references_are_fresh`: do not edit. -->\n\n\
         Every operation of the HTTP/JSON port (`http_listen`), each the \
         [gRPC method](api.md) it maps to, in the protobuf JSON mapping. The \
         server serves the whole OpenAPI 3.1 document at `/openapi.json`.\n",
    );
    let Some(paths) = document["paths"].as_object() else {
        return page;
    };
    for (path, operations) in paths {
        for (verb, operation) in operations.as_object().into_iter().flatten() {
            let _ = write!(
                page,
                "\n## `{} {path}`\n\n{} — {}\n",
                verb.to_uppercase(),
                operation["summary"].as_str().unwrap_or_default(),
                one_line(operation["description"].as_str().unwrap_or_default()),
            );
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !parameters.is_empty() {
                page.push_str("\n| parameter | in | meaning |\n|---|---|---|\n");
                for parameter in parameters {
                    let _ = writeln!(
                        page,
                        "| `{}` | {} | {} |",
                        parameter["name"].as_str().unwrap_or_default(),
                        parameter["in"].as_str().unwrap_or_default(),
                        one_line(parameter["description"].as_str().unwrap_or_default())
                    );
                }
            }
            if operation.get("requestBody").is_some() {
                page.push_str("\nThe body is the request message, as JSON.\n");
            }
        }
    }
    page
}

/// `GET /metrics` in the classic text format, over a plain TCP socket.
async fn scrape(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Every relative link of the book and of the README leads to a file that
/// exists, and every `#anchor` into a Markdown page to one of its headings:
/// the offline half of a link check (the book's pages are all listed in
/// its summary, which `mdbook build` checks).
#[test]
fn the_links_of_the_book_and_the_readme_resolve() {
    let pages = crate::helpers::documentation_pages();
    let link = markdown_links();
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in link(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}", page.display()));
                continue;
            }
            if !anchor.is_empty()
                && file.extension().is_some_and(|extension| extension == "md")
                && !anchors(&std::fs::read_to_string(&file).unwrap()).contains(&anchor.to_owned())
            {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of the inline links `[text](target)` of a Markdown text,
/// outside code blocks and code spans.
fn markdown_links() -> impl Fn(&str) -> Vec<String> {
    |text: &str| {
        let mut targets = Vec::new();
        let mut in_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if in_block {
                continue;
            }
            // Code spans hold no links.
            let prose: String = line
                .split('`')
                .enumerate()
                .filter(|(index, _)| index % 2 == 0)
                .map(|(_, part)| part)
                .collect();
            let mut rest = prose.as_str();
            while let Some(start) = rest.find("](") {
                let after = &rest[start + 2..];
                let Some(end) = after.find(')') else {
                    break;
                };
                targets.push(after[..end].trim().to_owned());
                rest = &after[end..];
            }
        }
        targets
    }
}

/// The anchors GitHub and mdBook give a page's headings: lowercase, spaces
/// as `-`, punctuation but `-` and `_` dropped.
fn anchors(text: &str) -> Vec<String> {
    let mut in_block = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
            }
            !in_block && line.starts_with('#')
        })
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The notifications guide lists every event kind a subscription can name,
/// in the order of the proto's `EventKind`, none missing and none of its own.
#[test]
fn the_notifications_guide_lists_every_event_kind_in_order() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/guides/notifications.md"),
    )
    .unwrap();
    let (_, section) = guide
        .split_once("\n## Event kinds\n")
        .expect("the guide has a section \"Event kinds\"");
    let section = section.split("\n## ").next().unwrap_or_default();
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `EVENT_KIND_"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(kind, _)| kind)
        .collect();
    let proto: Vec<&str> = (1..)
        .map_while(|value| policyhub::grpc::proto::EventKind::try_from(value).ok())
        .map(|kind| kind.as_str_name().trim_start_matches("EVENT_KIND_"))
        .collect();
    assert_eq!(listed, proto);
}
