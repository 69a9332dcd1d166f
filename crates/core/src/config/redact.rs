//! Debug without secrets: passwords, tokens and keys show whether they are set, never their value.

use std::fmt;

/// Debug of a secret field: shows whether it is set, never its value.
pub(super) struct Redacted<'a, T>(pub(super) &'a T);

impl fmt::Debug for Redacted<'_, Option<String>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<redacted>)"
        } else {
            "None"
        })
    }
}

impl fmt::Debug for Redacted<'_, Vec<String>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[<redacted>; {}]", self.0.len())
    }
}

/// Implements Debug printing `secret` fields as `<redacted>`; the destructuring makes a field
/// missing from the lists a compile error.
macro_rules! debug_redacting {
    ($ty:ident { $($field:ident),* $(,)? } secret { $($secret:ident),* $(,)? }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let $ty { $($field,)* $($secret,)* } = self;
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), $field))*
                    $(.field(stringify!($secret), &$crate::config::redact::Redacted($secret)))*
                    .finish()
            }
        }
    };
}

pub(super) use debug_redacting;
