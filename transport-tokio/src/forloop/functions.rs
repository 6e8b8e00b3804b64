//! Functions the loop body may run on the serving process's machine (`execute`).
//!
//! Only functions registered by name in the program can run: nothing from the wire is ever run
//! as code. Arguments and results travel as postcard bytes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

type Erased = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync;

/// A registry of functions callable by name from any process of the loop.
#[derive(Clone, Default)]
pub struct Functions {
    by_name: HashMap<String, Arc<Erased>>,
}

impl fmt::Debug for Functions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Functions").field("names", &names).finish()
    }
}

impl Functions {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` under `name`, replacing any function of that name. Its error type is
    /// reported to the caller as text.
    pub fn register<A, R, E, F>(mut self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        E: fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let erased = move |bytes: &[u8]| -> Result<Vec<u8>, String> {
            let args: A = postcard::from_bytes(bytes)
                .map_err(|e| format!("arguments do not decode as this function's: {e}"))?;
            let result = f(args).map_err(|e| e.to_string())?;
            postcard::to_allocvec(&result).map_err(|e| format!("result does not encode: {e}"))
        };
        self.by_name.insert(name.to_string(), Arc::new(erased));
        self
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Runs `name` on encoded arguments.
    ///
    /// # Errors
    /// The function's error text, or a message naming an unknown function.
    pub fn call_raw(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        match self.by_name.get(name) {
            Some(f) => f(args),
            None => Err(format!(
                "no function named {name:?} is registered on the serving process"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_round_trip_and_errors() {
        let fns = Functions::new()
            .register("add", |(a, b): (u32, u32)| Ok::<_, String>(a + b))
            .register("fail", |_: ()| Err::<u32, _>("nope"));
        let out = fns
            .call_raw("add", &postcard::to_allocvec(&(2u32, 3u32)).unwrap())
            .unwrap();
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 5);
        assert_eq!(fns.call_raw("fail", &[]).unwrap_err(), "nope");
        assert!(
            fns.call_raw("missing", &[])
                .unwrap_err()
                .contains("\"missing\"")
        );
        assert!(
            fns.call_raw("add", &[1])
                .unwrap_err()
                .contains("do not decode")
        );
    }
}
