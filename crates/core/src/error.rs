//! Errors as one line for an operator.

/// An error with its causes, each once (`a: b: c`): the cause is often what tells an
/// operator what to fix ("Connection refused", "invalid peer certificate: UnknownIssuer").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
