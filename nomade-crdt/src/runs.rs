//! Runs: consecutive operations of one actor joined into one.
//!
//! An operation covering `n` counters is shorthand for `n` one-element
//! operations, each following the one before it (docs/PROTOCOL.md,
//! "Operations"). So two operations of one actor on one entity can become
//! one exactly when the second is what the first's next element would be:
//! its first counter follows the first's last, its deps are the first's
//! with the actor's entry at that last counter, and it continues the same
//! edit (characters typed after the last character of the first, before
//! the same right origin, items
//! appended after its last item, or more elements removed). A device that
//! types a word one keystroke at a time thus stores and sends one operation,
//! and every receiver reaches the same state as from the keystrokes.

use nomade_wire::{Edit, ElementId, SmolStr, SyncOperation};

/// The most elements [`join`] puts in one run, so that a run stays well
/// within a frame (4,096 characters of text are at most 16 KiB).
pub const MAX_JOINED_SPAN: u64 = 4096;

/// Appends `next` to `run` if it continues it (see the module's doc);
/// returns whether it did. `run` keeps its timestamp.
///
/// ```
/// use nomade_crdt::{runs::try_append, LocalEdit, Replica};
/// use nomade_wire::EntityType;
///
/// let mut laptop = Replica::new("laptop");
/// let mut typed = Vec::new();
/// for (i, c) in "hey".chars().enumerate() {
///     let edit = LocalEdit::Splice { field: "body".into(), position: i, delete: 0, insert: c.into() };
///     typed.extend(laptop.apply_local(EntityType::Document, "note", edit, 0)?);
/// }
/// let mut run = typed[0].clone();
/// assert!(typed[1..].iter().all(|op| try_append(&mut run, op)));
/// let mut phone = Replica::new("phone");
/// phone.apply_remote(run)?;
/// assert_eq!(phone.state_hash(), laptop.state_hash());
/// # Ok::<(), nomade_crdt::CrdtError>(())
/// ```
pub fn try_append(run: &mut SyncOperation, next: &SyncOperation) -> bool {
    let mut grown = None;
    let joined = append(run, run.operation.edit.span(), next, &mut grown);
    finish(run, grown);
    joined
}

/// [`try_append`] for a run that covers `run_span` counters, its text as
/// grown so far in `grown` when that is `Some` (a text is immutable: a run
/// typed a character at a time is built in `grown`, then set once by
/// [`finish`]).
fn append(
    run: &mut SyncOperation,
    run_span: u64,
    next: &SyncOperation,
    grown: &mut Option<String>,
) -> bool {
    if run.actor_id != next.actor_id
        || run.entity_type != next.entity_type
        || run.entity_id != next.entity_id
    {
        return false;
    }
    let Some(last) = run
        .operation
        .counter
        .checked_add(run_span.saturating_sub(1))
    else {
        return false;
    };
    if run_span == 0 || last.checked_add(1) != Some(next.operation.counter) {
        return false;
    }
    // The deps of the run's next element: the run's, the actor's entry at
    // its last counter.
    let mut expected = run.operation.deps.clone();
    expected.insert(run.actor_id.clone(), last);
    let follows = next.operation.deps == expected;
    if !follows {
        return false;
    }
    let after_last = Some(ElementId {
        actor: run.actor_id.clone(),
        counter: last,
    });
    match (&mut run.operation.edit, &next.operation.edit) {
        (
            Edit::InsertText {
                field,
                text,
                before,
                ..
            },
            Edit::InsertText {
                field: f,
                after,
                before: b,
                text: t,
            },
        ) if field == f && *after == after_last && b == before && !t.is_empty() => {
            grown.get_or_insert_with(|| text.to_string()).push_str(t);
            true
        }
        (
            Edit::Insert { values, before, .. },
            Edit::Insert {
                after,
                before: b,
                values: v,
            },
        ) if *after == after_last && b == before && !v.is_empty() => {
            values.extend(v.iter().cloned());
            true
        }
        (
            Edit::Remove { field, ranges },
            Edit::Remove {
                field: f,
                ranges: r,
            },
        ) if field == f && !r.is_empty() && r.iter().all(|r| r.len > 0) => {
            for range in r {
                match ranges.last_mut() {
                    Some(prev)
                        if prev.actor == range.actor
                            && prev.counter.checked_add(prev.len) == Some(range.counter) =>
                    {
                        prev.len += range.len;
                    }
                    _ => ranges.push(range.clone()),
                }
            }
            true
        }
        _ => false,
    }
}

/// Joins every operation of `ops` that continues the one before it (see
/// [`try_append`]), keeping their order, into runs of at most
/// [`MAX_JOINED_SPAN`] elements.
pub fn join(ops: impl IntoIterator<Item = SyncOperation>) -> Vec<SyncOperation> {
    let mut out: Vec<SyncOperation> = Vec::new();
    // The last run's span, and its text while it grows.
    let mut span = 0;
    let mut grown = None;
    for op in ops {
        let op_span = op.operation.edit.span();
        let joined = out.last_mut().is_some_and(|run| {
            span + op_span <= MAX_JOINED_SPAN && append(run, span, &op, &mut grown)
        });
        if joined {
            span += op_span;
            continue;
        }
        if let Some(run) = out.last_mut() {
            finish(run, grown.take());
        }
        out.push(op);
        span = op_span;
    }
    if let Some(run) = out.last_mut() {
        finish(run, grown.take());
    }
    out
}

/// Sets a text run's grown text (see [`append`]).
fn finish(run: &mut SyncOperation, grown: Option<String>) {
    if let (Some(grown), Edit::InsertText { text, .. }) = (grown, &mut run.operation.edit) {
        *text = SmolStr::from(grown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalEdit, Replica};
    use nomade_wire::EntityType;

    fn splice(r: &mut Replica, position: usize, delete: usize, insert: &str) -> Vec<SyncOperation> {
        let edit = LocalEdit::Splice {
            field: "t".into(),
            position,
            delete,
            insert: insert.into(),
        };
        r.apply_local(EntityType::Document, "d", edit, 0).unwrap()
    }

    #[test]
    fn typing_then_backspacing_joins_into_two_runs() {
        let mut a = Replica::new("a");
        let mut ops = Vec::new();
        for (i, c) in "hello".chars().enumerate() {
            ops.extend(splice(&mut a, i, 0, &c.to_string()));
        }
        for i in (2..5).rev() {
            ops.extend(splice(&mut a, i, 1, ""));
        }
        let runs = join(ops.clone());
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0].operation.edit.span(), 5);
        assert_eq!(runs[1].operation.edit.span(), 3);
        let mut whole = Replica::new("b");
        for op in runs {
            whole.apply_remote(op).unwrap();
        }
        assert_eq!(whole.text("d", "t").as_deref(), Some("he"));
        assert_eq!(whole.state_hash(), a.state_hash());
    }

    #[test]
    fn what_does_not_continue_the_run_stays_apart() {
        let mut a = Replica::new("a");
        let mut ops = splice(&mut a, 0, 0, "ab");
        // Typed elsewhere: not after the run's last character.
        ops.extend(splice(&mut a, 0, 0, "c"));
        // Another entity, then a field write.
        ops.extend(
            a.apply_local(
                EntityType::Document,
                "e",
                LocalEdit::Splice {
                    field: "t".into(),
                    position: 0,
                    delete: 0,
                    insert: "x".into(),
                },
                0,
            )
            .unwrap(),
        );
        ops.extend(
            a.apply_local(
                EntityType::Document,
                "d",
                LocalEdit::Set {
                    key: "k".into(),
                    value: 1.into(),
                },
                0,
            )
            .unwrap(),
        );
        assert_eq!(join(ops.clone()).len(), ops.len());
        // Runs stop at the bound.
        let mut long = Replica::new("l");
        let typed: Vec<_> = (0..MAX_JOINED_SPAN as usize + 10)
            .flat_map(|i| splice(&mut long, i, 0, "x"))
            .collect();
        let runs = join(typed);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].operation.edit.span(), MAX_JOINED_SPAN);
        // Another device's operation in between changes the deps: no join.
        let mut b = Replica::new("b");
        for op in &ops {
            b.apply_remote(op.clone()).unwrap();
        }
        let theirs = splice(&mut b, 3, 0, "y");
        for op in &theirs {
            a.apply_remote(op.clone()).unwrap();
        }
        let len = a.text("d", "t").map_or(0, |t| t.chars().count());
        let mine = splice(&mut a, len, 0, "z");
        let mut run = theirs[0].clone();
        assert!(!try_append(&mut run, &mine[0]));
    }
}
