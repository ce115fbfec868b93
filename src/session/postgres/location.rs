//! The PostgreSQL store's URL: `postgres://user@host:port/db`, with callboard's own optional
//! `schema=NAME` query parameter (every table in that schema, created if missing: one
//! database can hold many independent stores, as the tests do).

use std::str::FromStr;

use crate::session::SessionError;

/// A parsed store URL: the client's config and the schema, if one was named.
pub(crate) struct PgLocation {
    /// The connection settings.
    pub config: tokio_postgres::Config,
    /// The schema the tables live in (`public` when `None`).
    pub schema: Option<String>,
    /// The URL without its password, for banners and errors.
    pub shown: String,
}

/// Whether `url` names a PostgreSQL store.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Whether `name` is usable as a schema name without quoting: a letter or `_`, then letters,
/// digits and `_`, at most 63 bytes (PostgreSQL's limit).
pub(crate) fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Parses `url`; the error says what is wrong with it.
pub(crate) fn parse(url: &str) -> Result<PgLocation, SessionError> {
    let shown = hide_password(url);
    let bad = |reason: String| SessionError::Open {
        path: shown.clone(),
        reason,
    };
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("schema", v)) => {
                if !valid_schema(v) {
                    return Err(bad(format!(
                        "schema={v} is not a plain schema name (lower-case letters, digits and _, starting with a letter or _)"
                    )));
                }
                schema = Some(v.to_owned());
            }
            _ if pair.is_empty() => {}
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        bad(format!(
            "not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DATABASE"
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    if let Some(s) = &schema {
        let options = config.get_options().unwrap_or("").to_owned();
        config.options(format!("{options} -c search_path={s}").trim());
    }
    config.application_name("callboard");
    Ok(PgLocation {
        config,
        schema,
        shown,
    })
}

/// `url` with any password replaced by `***`.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_taken_out_of_the_url() {
        let l = parse("postgres://postgres@127.0.0.1:5432/test?schema=t_1&sslmode=disable")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.schema.as_deref(), Some("t_1"));
        assert_eq!(l.config.get_dbname(), Some("test"));
        assert_eq!(l.config.get_options(), Some("-c search_path=t_1"));
    }

    #[test]
    fn bad_schema_and_bad_url_are_refused() {
        assert!(parse("postgres://h/db?schema=a;drop").is_err());
        assert!(parse("postgres://h/db?schema=Upper").is_err());
        assert!(parse("postgres://h:notaport/db").is_err());
    }

    #[test]
    fn password_is_hidden() {
        assert_eq!(
            hide_password("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(hide_password("postgres://u@h/db"), "postgres://u@h/db");
    }
}
