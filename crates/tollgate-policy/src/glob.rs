//! Tool-name patterns: `*` matches any run of characters, `?` exactly one.
//!
//! A policy may name tools by pattern; when several patterns of one rule map match a tool,
//! the most specific wins, where specificity is the number of literal (non-wildcard)
//! characters. Two patterns of equal specificity that can match the same name would make the
//! choice arbitrary, so [`Glob::overlap`] finds such a name and the compiler rejects the pair.

use std::collections::{HashSet, VecDeque};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
}

/// A compiled tool-name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let mut tokens = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyOne,
                c => Token::Literal(c),
            };
            // `**` means the same as `*`; folding keeps matching linear.
            if token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun) {
                continue;
            }
            tokens.push(token);
        }
        Glob {
            source: pattern.to_owned(),
            tokens,
        }
    }

    /// Whether the pattern contains a wildcard (otherwise it names exactly one tool).
    pub fn is_pattern(text: &str) -> bool {
        text.contains(['*', '?'])
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Number of literal characters: the higher, the more specific.
    pub fn specificity(&self) -> usize {
        self.tokens.iter().filter(|t| matches!(t, Token::Literal(_))).count()
    }

    /// True when the pattern matches every possible name (`*`).
    pub fn matches_everything(&self) -> bool {
        self.tokens == [Token::AnyRun]
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matches_chars(&name.chars().collect::<Vec<char>>())
    }

    /// [`Glob::matches`] on a name already split into characters, so that trying many
    /// patterns against one name decodes it once.
    pub fn matches_chars(&self, name: &[char]) -> bool {
        // Classic wildcard matching with single backtrack point for `*`: O(n·m) worst case.
        let (mut p, mut n) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, n));
                    p += 1;
                }
                Some(Token::AnyOne) => {
                    p += 1;
                    n += 1;
                }
                Some(Token::Literal(c)) if *c == name[n] => {
                    p += 1;
                    n += 1;
                }
                _ => match star {
                    Some((sp, sn)) => {
                        p = sp + 1;
                        n = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }

    /// A name both patterns match, if there is one.
    ///
    /// Breadth-first search over pairs of positions in the two patterns; each step either
    /// lets a `*` match nothing more or consumes one character in both. The first pair that
    /// reaches both ends yields the shortest common name.
    pub fn overlap(&self, other: &Glob) -> Option<String> {
        let (a, b) = (&self.tokens, &other.tokens);
        let mut seen = HashSet::new();
        let mut queue = VecDeque::new();
        queue.push_back((0usize, 0usize, String::new()));
        seen.insert((0, 0));
        while let Some((i, j, witness)) = queue.pop_front() {
            if i == a.len() && j == b.len() {
                return Some(witness);
            }
            let mut next = Vec::with_capacity(3);
            if a.get(i) == Some(&Token::AnyRun) {
                next.push((i + 1, j, None));
            }
            if b.get(j) == Some(&Token::AnyRun) {
                next.push((i, j + 1, None));
            }
            if let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
                let consumed = match (x, y) {
                    (Token::Literal(c), Token::Literal(d)) if c == d => Some(*c),
                    (Token::Literal(_), Token::Literal(_)) => None,
                    (Token::Literal(c), _) | (_, Token::Literal(c)) => Some(*c),
                    _ => Some('x'),
                };
                if let Some(c) = consumed {
                    let ni = if *x == Token::AnyRun { i } else { i + 1 };
                    let nj = if *y == Token::AnyRun { j } else { j + 1 };
                    // Two `*` consuming together loops on the same state; skip it.
                    if (ni, nj) != (i, j) {
                        next.push((ni, nj, Some(c)));
                    }
                }
            }
            for (ni, nj, c) in next {
                if seen.insert((ni, nj)) {
                    let mut w = witness.clone();
                    w.extend(c);
                    queue.push_back((ni, nj, w));
                }
            }
        }
        None
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run_and_question_mark_one_character() {
        let g = Glob::new("k8s_*");
        assert!(g.matches("k8s_get_pods"));
        assert!(g.matches("k8s_"));
        assert!(!g.matches("k8s"));
        assert!(!g.matches("helm_k8s_x"));
        assert!(Glob::new("*_pause").matches("k8s_rollout_pause"));
        assert!(Glob::new("k8s_*_pause").matches("k8s_rollout_pause"));
        assert!(!Glob::new("k8s_*_pause").matches("k8s_rollout_resume"));
        assert!(Glob::new("k8s_scal?").matches("k8s_scale"));
        assert!(!Glob::new("k8s_scal?").matches("k8s_scal"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("aXbYbZc"));
        assert!(!Glob::new("a*b*c").matches("aXbYbZ"));
    }

    #[test]
    fn specificity_counts_literal_characters() {
        assert_eq!(Glob::new("*").specificity(), 0);
        assert_eq!(Glob::new("k8s_*").specificity(), 4);
        assert_eq!(Glob::new("k8s_**").specificity(), 4);
        assert_eq!(Glob::new("k8s_?").specificity(), 4);
    }

    #[test]
    fn overlap_finds_a_common_name_when_there_is_one() {
        let w = Glob::new("a*").overlap(&Glob::new("*b")).expect("overlap");
        assert!(Glob::new("a*").matches(&w) && Glob::new("*b").matches(&w), "{w}");
        let w = Glob::new("k8s_*").overlap(&Glob::new("*_pods")).expect("overlap");
        assert!(Glob::new("k8s_*").matches(&w) && Glob::new("*_pods").matches(&w));
        assert_eq!(Glob::new("a*").overlap(&Glob::new("b*")), None);
        assert_eq!(Glob::new("a?c").overlap(&Glob::new("a??d")), None);
        assert!(Glob::new("*").overlap(&Glob::new("*")).is_some());
    }
}
