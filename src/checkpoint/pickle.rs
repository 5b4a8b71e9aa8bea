//! A guarded run of candle's pickle machine: what may be unpickled from a checkpoint.
//!
//! candle's `pickle::Stack` executes nothing (a call is only recorded as an object), but it
//! accepts any global, so a file naming `os.system` reads without complaint, and a few
//! opcodes can make it panic or allocate without bound. Rather than write another pickle
//! machine, this steps candle's one opcode at a time and looks at each opcode before it runs:
//! a global outside the few a state dict needs is refused with its name, and what could hurt
//! is checked first: a huge integer, a string longer than the file, memo copies that grow
//! without bound, objects nested deep enough to overflow the stack when dropped.

use std::collections::HashMap;

use candle_core::pickle::{Object, Stack};

/// The globals a state dict needs: PyTorch's tensor rebuild functions, the ordered dict it
/// stores entries in, and the storage types that say what a storage holds.
const ALLOWED: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// How many objects may be copied or inspected beyond four per byte of pickle: candle's memo
/// hands out deep copies, and a few bytes can otherwise double an object again and again.
const WORK_ALLOWANCE: usize = 1 << 20;

/// How deeply objects may nest. A state dict nests about eight deep (dict, parameter,
/// tensor, storage id); candle's objects are dropped recursively, so a pickle nesting a
/// million deep would overflow the stack.
const MAX_DEPTH: usize = 100;

/// What is wrong with a pickle, or the file around it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    /// A global outside the allowed few; nothing was run.
    #[error(
        "it names the Python global `{0}`, which a state dict never needs; refused (nothing was run)"
    )]
    RefusedGlobal(String),
    /// The file ends inside a pickle or a storage.
    #[error("the file ends early, inside {0}")]
    Truncated(String),
    /// Something a state dict does not hold, or bytes that are not a pickle.
    #[error("{0}")]
    Malformed(String),
}

/// Whether a state dict may name `module.name`.
pub fn allowed(module: &str, name: &str) -> bool {
    ALLOWED.iter().any(|&(m, n)| m == module && n == name)
}

/// An unpickled object and what else the stream told.
#[derive(Debug)]
pub struct Unpickled {
    /// The object.
    pub object: Object,
    /// Bytes the pickle took.
    pub length: usize,
    /// Each string's rank among the strings of the stream, by first appearance. candle's
    /// SETITEMS adds a batch of entries to a dict in reverse, so a state dict's order is
    /// recovered from where its names first appear (each name precedes its tensor).
    pub first_seen: HashMap<String, usize>,
}

/// Unpickles the pickle at the start of `bytes` (`what` names it in errors, e.g. "the state
/// dict pickle").
pub fn unpickle(bytes: &[u8], what: &str) -> Result<Unpickled, Fault> {
    let mut rest = bytes;
    let mut stack = Stack::empty();
    let mut first_seen = HashMap::new();
    let mut work = Work {
        done: 0,
        budget: bytes.len().saturating_mul(4).saturating_add(WORK_ALLOWANCE),
        what,
    };
    loop {
        let Some(&opcode) = rest.first() else {
            return Err(Fault::Truncated(what.to_string()));
        };
        check(opcode, &rest[1..], &stack, what)?;
        // What APPEND(S) and SETITEM(S) put into a container must leave it shallow enough.
        let items = stack.stack();
        let added = match opcode {
            b'a' => items.len().saturating_sub(1),
            b's' => items.len().saturating_sub(2),
            b'e' | b'u' => items
                .iter()
                .rposition(|o| *o == Object::Mark)
                .map_or(items.len(), |mark| mark + 1),
            _ => items.len(),
        };
        for item in &items[added..] {
            work.walk(item, MAX_DEPTH - 1)?;
        }
        let done = stack.read(&mut rest).map_err(|e| {
            if rest.is_empty() {
                Fault::Truncated(what.to_string())
            } else {
                Fault::Malformed(format!("{what} is not one xferlab reads: {e}"))
            }
        })?;
        if done {
            break;
        }
        if opcode == b'X'
            && let Some(Object::Unicode(s)) = stack.stack().last()
        {
            let rank = first_seen.len();
            first_seen.entry(s.clone()).or_insert(rank);
        }
        // After a memo copy (BINGET, LONG_BINGET, BINPUT, LONG_BINPUT), charge what was
        // copied; after an opcode that wraps objects into a new one, check its depth.
        if let (
            b'h' | b'j' | b'q' | b'r' | b't' | 0x85..=0x87 | b'R' | b'b' | 0x81 | b'Q',
            Some(top),
        ) = (opcode, stack.stack().last())
        {
            work.walk(top, MAX_DEPTH)?;
        }
    }
    let object = stack
        .finalize()
        .map_err(|_| Fault::Malformed(format!("{what} is empty")))?;
    Ok(Unpickled {
        object,
        length: bytes.len() - rest.len(),
        first_seen,
    })
}

/// Looks at one opcode and its arguments before candle runs it.
fn check(opcode: u8, arguments: &[u8], stack: &Stack, what: &str) -> Result<(), Fault> {
    let truncated = || Fault::Truncated(what.to_string());
    match opcode {
        // GLOBAL and INST: module and name as two lines of text.
        b'c' | b'i' => {
            let mut lines = arguments.splitn(3, |&b| b == b'\n');
            let (Some(module), Some(name), Some(_)) = (lines.next(), lines.next(), lines.next())
            else {
                return Err(truncated());
            };
            let module = String::from_utf8_lossy(module);
            let name = String::from_utf8_lossy(name);
            if !allowed(&module, &name) {
                return Err(Fault::RefusedGlobal(format!("{module}.{name}")));
            }
            if opcode == b'i' {
                return Err(Fault::Malformed(format!(
                    "{what} builds `{module}.{name}` with INST, which a state dict never does"
                )));
            }
        }
        // STACK_GLOBAL (protocol 4): module and name are the two strings on the stack.
        0x93 => {
            let items = stack.stack();
            let name_of = |o: Option<&Object>| match o {
                Some(Object::Unicode(s)) => s.clone(),
                _ => "?".to_string(),
            };
            let n = items.len();
            let module = name_of(n.checked_sub(2).and_then(|i| items.get(i)));
            let name = name_of(items.last());
            if !allowed(&module, &name) {
                return Err(Fault::RefusedGlobal(format!("{module}.{name}")));
            }
        }
        // LONG1: candle decodes at most 8 bytes into an i64; more would overflow.
        0x8a => {
            let length = *arguments.first().ok_or_else(truncated)?;
            if length > 8 {
                return Err(Fault::Malformed(format!(
                    "{what} holds a {length}-byte integer; a state dict needs at most 8"
                )));
            }
        }
        // BINUNICODE: candle allocates the stated length before reading it.
        b'X' => {
            let length: [u8; 4] = arguments
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(truncated)?;
            if u32::from_le_bytes(length) as usize > arguments.len() - 4 {
                return Err(truncated());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Objects copied or inspected so far, against a budget proportional to the pickle's size.
struct Work<'a> {
    done: usize,
    budget: usize,
    what: &'a str,
}

impl Work<'_> {
    /// Walks `object`, charging each object; fails past the budget or below `max_depth`.
    fn walk(&mut self, object: &Object, max_depth: usize) -> Result<(), Fault> {
        let mut pending = vec![(object, 0usize)];
        while let Some((o, depth)) = pending.pop() {
            if depth > max_depth {
                return Err(Fault::Malformed(format!(
                    "{} nests objects more than {MAX_DEPTH} deep; a state dict needs about 8",
                    self.what
                )));
            }
            self.done += 1;
            if self.done > self.budget {
                return Err(Fault::Malformed(format!(
                    "{} copies or nests its objects far more than a state dict needs",
                    self.what
                )));
            }
            let next = depth + 1;
            match o {
                Object::Tuple(items) | Object::List(items) => {
                    pending.extend(items.iter().map(|i| (i, next)))
                }
                Object::Dict(entries) => entries
                    .iter()
                    .for_each(|(k, v)| pending.extend([(k, next), (v, next)])),
                Object::Reduce { callable, args } | Object::Build { callable, args } => {
                    pending.extend([(callable.as_ref(), next), (args.as_ref(), next)])
                }
                Object::PersistentLoad(inner) => pending.push((inner, next)),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_global_outside_the_state_dict_ones_is_refused_by_name() {
        // GLOBAL os system; a string; TUPLE1; REDUCE; STOP: `os.system("echo pwned")`.
        let mut pickle = b"\x80\x02cos\nsystem\nX\x0a\x00\x00\x00echo pwned".to_vec();
        pickle.extend_from_slice(b"\x85R.");
        assert_eq!(
            unpickle(&pickle, "the pickle").err(),
            Some(Fault::RefusedGlobal("os.system".into()))
        );
        let eval = b"\x80\x02cbuiltins\neval\n)R.";
        assert_eq!(
            unpickle(eval, "the pickle").err(),
            Some(Fault::RefusedGlobal("builtins.eval".into()))
        );
    }

    #[test]
    fn a_stack_global_is_refused_by_name() {
        // Protocol 4: SHORT_BINUNICODE is not candle's, so build the strings with BINUNICODE.
        let pickle = b"\x80\x04X\x02\x00\x00\x00osX\x06\x00\x00\x00system\x93.";
        assert_eq!(
            unpickle(pickle, "the pickle").err(),
            Some(Fault::RefusedGlobal("os.system".into()))
        );
    }

    #[test]
    fn the_globals_of_a_state_dict_are_accepted() {
        let pickle = b"\x80\x02ccollections\nOrderedDict\n)R.";
        let unpickled = unpickle(pickle, "the pickle").unwrap();
        assert_eq!(unpickled.object, Object::Dict(vec![]));
        assert_eq!(unpickled.length, pickle.len());
    }

    #[test]
    fn truncated_and_oversized_arguments_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x02",
            b"\x80\x02ccollections\nOrdered",
            b"\x80\x02X\xff\xff\xff\xffabc",
            b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.",
            b"\x80\x02}(X\x01\x00\x00\x00a",
            b"\x80\x02\xfe",
        ];
        for case in cases {
            assert!(unpickle(case, "the pickle").is_err(), "{case:?}");
        }
    }

    #[test]
    fn memo_copies_that_double_again_and_again_are_refused() {
        // ] q0 (h0 h0 t q0 ... : each round doubles the object in memo 0.
        let mut pickle = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            pickle.extend_from_slice(b"(h\x00h\x00tq\x00");
        }
        pickle.push(b'.');
        assert!(matches!(
            unpickle(&pickle, "the pickle"),
            Err(Fault::Malformed(m)) if m.contains("copies")
        ));
    }

    #[test]
    fn objects_nested_deeply_are_refused_before_they_overflow_the_stack() {
        // `times` openings, then `inner`, then `times` closings.
        let deep = |opening: &[u8], inner: &[u8], closing: &[u8], times: usize| {
            let mut pickle = b"\x80\x02".to_vec();
            pickle.extend(opening.repeat(times));
            pickle.extend(inner);
            pickle.extend(closing.repeat(times));
            pickle.push(b'.');
            unpickle(&pickle, "the pickle").err()
        };
        let refused =
            |fault: Option<Fault>| matches!(fault, Some(Fault::Malformed(m)) if m.contains("deep"));
        // None in a million one-tuples; in a million MARK ... TUPLEs; lists appended into
        // lists.
        assert!(refused(deep(b"", b"N", b"\x85", 1_000_000)));
        assert!(refused(deep(b"(", b"N", b"t", 1_000_000)));
        assert!(refused(deep(b"]", b"]", b"a", 199)));
        // A state dict's depth is far below the limit.
        assert!(deep(b"(", b"N", b"t", 50).is_none());
        assert!(deep(b"]", b"]", b"a", 50).is_none());
    }
}
