//! polars helpers of the stages that join tables by (prompt_id, sample_idx): reading selected
//! columns with their types checked, sorting by key with uniqueness checked, a full join that
//! fails on a key only one side has, and typed column access with nulls reported by row.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use polars::prelude::{
    DataFrame, DataFrameJoinOps, DataType, JoinArgs, JoinCoalesce, JoinType, ParquetReader, SerReader,
    SortMultipleOptions,
};

/// Reads the Parquet file at `path` with polars, keeping only `columns`, which must exist with
/// the given types and hold no nulls. Errors name the file and the column.
pub(crate) fn read_frame(path: &Path, columns: &[(&str, DataType)]) -> Result<DataFrame> {
    let hint = "rerun the stage that produced it";
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = ParquetReader::new(file);
    let schema = reader
        .schema()
        .with_context(|| format!("{}: not a readable Parquet file; {hint}", path.display()))?;
    for (name, _) in columns {
        if schema.get(*name).is_none() {
            let have: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
            bail!("{}: missing column {name:?} (it has: {}); {hint}", path.display(), have.join(", "));
        }
    }
    let df = reader
        .with_columns(Some(columns.iter().map(|(n, _)| n.to_string()).collect()))
        .finish()
        .with_context(|| format!("{}: cannot read it with polars; {hint}", path.display()))?;
    for (name, dtype) in columns {
        let col = df.column(name)?;
        ensure!(
            col.dtype() == dtype,
            "{}: column {name:?} has type {} but {dtype} is needed; {hint}",
            path.display(),
            col.dtype()
        );
        if col.null_count() > 0 {
            let row = (0..col.len()).find(|&i| col.get(i).is_ok_and(|v| v.is_null())).unwrap_or(0);
            bail!("{}: column {name:?}, row {row}: null, but the column does not allow nulls; {hint}", path.display());
        }
    }
    Ok(df)
}

/// `df` sorted by (prompt_id, sample_idx), after checking that no key appears twice.
pub(crate) fn sort_unique_keys(df: DataFrame, path: &Path) -> Result<DataFrame> {
    let df = df.sort(["prompt_id", "sample_idx"], SortMultipleOptions::default().with_maintain_order(true))?;
    let ids = str_values(&df, "prompt_id")?;
    let idx = u32_values(&df, "sample_idx")?;
    if let Some(i) = (1..df.height()).find(|&i| ids[i] == ids[i - 1] && idx[i] == idx[i - 1]) {
        bail!(
            "{}: prompt {} sample {} appears more than once; every (prompt_id, sample_idx) must be unique",
            path.display(),
            ids[i],
            idx[i]
        );
    }
    Ok(df)
}

/// Full join of two frames sorted and unique on (prompt_id, sample_idx), failing on the first key
/// (in key order) that only one side has; `left_marker` / `right_marker` are non-null columns of
/// each side (null after the join exactly where that side lacks the key). The result is sorted by
/// key.
pub(crate) fn full_join_complete(
    left: &DataFrame,
    right: &DataFrame,
    left_marker: &str,
    right_marker: &str,
    left_name: &str,
    right_name: &str,
) -> Result<DataFrame> {
    let keys = ["prompt_id", "sample_idx"];
    let mut args = JoinArgs::new(JoinType::Full);
    args.coalesce = JoinCoalesce::CoalesceColumns;
    let joined = left
        .join(right, keys, keys, args, None)?
        .sort(keys, SortMultipleOptions::default().with_maintain_order(true))?;
    let lm = joined.column(left_marker)?;
    let rm = joined.column(right_marker)?;
    if lm.null_count() + rm.null_count() > 0 {
        let ids = joined.column("prompt_id")?.str()?.clone();
        let idx = joined.column("sample_idx")?.u32()?.clone();
        for i in 0..joined.height() {
            let (in_left, in_right) = (!lm.get(i)?.is_null(), !rm.get(i)?.is_null());
            if in_left && in_right {
                continue;
            }
            let (has, lacks) = if in_left { (left_name, right_name) } else { (right_name, left_name) };
            bail!(
                "prompt {} sample {} is in {has} but not in {lacks}; both must cover the same samples",
                ids.get(i).unwrap_or("?"),
                idx.get(i).map_or_else(|| "?".to_string(), |v| v.to_string()),
            );
        }
    }
    Ok(joined)
}

/// The row ranges of equal prompt ids in ids sorted by prompt id.
pub(crate) fn prompt_runs(ids: &[String]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=ids.len() {
        if i == ids.len() || ids[i] != ids[start] {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

pub(crate) fn str_values(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    df.column(name)?
        .str()?
        .iter()
        .enumerate()
        .map(|(i, v)| v.map(str::to_owned).with_context(|| format!("column {name:?}, row {i}: null")))
        .collect()
}

pub(crate) fn u32_values(df: &DataFrame, name: &str) -> Result<Vec<u32>> {
    df.column(name)?
        .u32()?
        .iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("column {name:?}, row {i}: null")))
        .collect()
}

pub(crate) fn f64_values(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    df.column(name)?
        .f64()?
        .iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("column {name:?}, row {i}: null")))
        .collect()
}
