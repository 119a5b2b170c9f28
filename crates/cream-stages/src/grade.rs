//! Grading a generated answer against its gold answer (shared by `eval`, which grades, and
//! `prepare`, which refuses a gold answer that could not be graded before any generation runs).

use anyhow::{Context, Result, ensure};
use cream_algo::{extract_answer_text, extract_choice, extract_number, normalize_answer_text, normalize_number, numbers_equal};

/// Tasks graded by their multiple-choice letter.
pub const CHOICE_TASKS: [&str; 4] = ["socialiqa", "arc_easy", "arc_challenge", "obqa"];

/// Grade one response of `task` against its `gold` answer: the extracted answer (`None` when
/// nothing parses) and whether it is correct.
///
/// `gsm8k`: [`extract_number`], correct when [`numbers_equal`] to `gold`. Multiple-choice tasks
/// (`socialiqa`, `arc_easy`, `arc_challenge`, `obqa`): [`extract_choice`] with
/// `compat_last_letter`, correct when equal to the gold letter (case-insensitive). Any other task
/// (an evaluation set of `[[data.sources]]`) by the form of its gold answer: a number as GSM8K, a
/// single letter A-D as multiple choice, else free text: [`extract_answer_text`], correct when
/// equal to the gold answer after [`normalize_answer_text`] (exact match).
///
/// # Errors
/// A gold answer that is not of the task's kind (not a number for `gsm8k`, not a single letter
/// A-D for the multiple-choice tasks; free text that is empty or more than one line).
pub fn grade(task: &str, response: &str, gold: &str, compat_last_letter: bool) -> Result<(Option<String>, bool)> {
    let letter = gold_letter(gold);
    if task == "gsm8k" || (!CHOICE_TASKS.contains(&task) && normalize_number(gold).is_some()) {
        ensure!(normalize_number(gold).is_some(), "gsm8k gold answer {gold:?} is not a number");
        let extracted = extract_number(response);
        let correct = extracted.as_deref().is_some_and(|e| numbers_equal(e, gold));
        Ok((extracted, correct))
    } else if CHOICE_TASKS.contains(&task) || letter.is_some() {
        let gold_letter = letter.with_context(|| format!("{task} gold answer {gold:?} is not a letter A-D"))?;
        let extracted = extract_choice(response, compat_last_letter).map(|c| c.to_ascii_uppercase());
        Ok((extracted.map(String::from), extracted == Some(gold_letter)))
    } else {
        let want = normalize_answer_text(gold);
        ensure!(
            !want.is_empty() && !gold.trim().contains('\n'),
            "{task} gold answer {gold:?} is empty or more than one line; free-text answers are compared with \
             the line after \"Answer:\" of the response, so a gold answer must be one non-empty line"
        );
        let extracted = extract_answer_text(response);
        let correct = extracted.as_deref() == Some(want.as_str());
        Ok((extracted, correct))
    }
}

/// The letter of a gold answer that is a single letter A-D (any case, surrounding spaces).
fn gold_letter(gold: &str) -> Option<char> {
    match gold.trim().to_ascii_uppercase().as_str() {
        g @ ("A" | "B" | "C" | "D") => g.chars().next(),
        _ => None,
    }
}

