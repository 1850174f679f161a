//! The ML candidates. Features are TF-IDF vectors over vocabularies of the training texts
//! (word 1–2-grams, and word 1–2-grams with character 1–5-grams of each text's head),
//! sized so that the program stays within [`PROGRAM_BUDGET`]; they are extracted once and
//! shared by every fold and candidate. Models are linear SVMs (squared hinge) and logistic
//! regressions trained by dual coordinate descent, one-vs-rest, cross-validated along a
//! path of `C` values with warm starts (every fold × class job in parallel), and
//! multinomial naive Bayes (int8 weights too, see [`linear::quantize_bayes`]); a program
//! over [`MAX_PROGRAM_BYTES`] is not kept. Candidates are compared on the spec's metric; confidences are
//! calibrated by a temperature fitted on the out-of-fold scores.

use std::sync::Arc;

use serde_json::{json, Value};

use super::folds::par_map;
use super::{Cand, Ctx, MlCand, Strategy};
use crate::features::{FeatureConfig, NgramSpec};
use crate::linear::{self, LinearModel, SparseVec};
use crate::metrics::metric_value;
use crate::solver::{self, Binary, Csr, Dual, Loss};
use crate::tfidf::{DocFreq, Vocab};

/// Bytes of program JSON the vocabularies, IDF factors and weights of one model are
/// planned within (at most half the runtime's program size limit): below 8 MB with room
/// for the rest of the program.
pub(super) const PROGRAM_BUDGET: usize = 6_000_000;
/// Largest program a synthesis keeps (when the runtime's limit is not lower): a
/// candidate over it is left out, with a note in the report.
pub(super) const MAX_PROGRAM_BYTES: usize = 8_000_000;
/// `C` paths (scikit-learn's `C`), ascending: each solve warm-starts the next.
const SVM_C: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];
const LOGREG_C: [f64; 4] = [1.0, 4.0, 16.0, 64.0];
/// Naive Bayes smoothing grid.
const ALPHA_GRID: [f64; 2] = [0.1, 1.0];
/// Classes whose example counts differ by this factor or more are imbalanced: a
/// class-weighted ("balanced") SVM is tried as well.
const IMBALANCE: usize = 3;

/// A feature set with its vectors.
struct Features {
    config: FeatureConfig,
    xs: Arc<Vec<SparseVec>>,
    csr: Arc<Csr>,
    desc: String,
}

impl Ctx<'_> {
    fn width(&self) -> usize {
        if self.k == 2 {
            1
        } else {
            self.k
        }
    }

    /// Every ML candidate; `notes` receives the ones not tried and why.
    pub(super) fn ml_candidates(&self, notes: &mut Vec<String>) -> Vec<MlCand> {
        let words = NgramSpec {
            words: true,
            n_min: 1,
            n_max: 2,
            bits: 0,
            seed: 0,
            log1p: false,
            l2: true,
            within_words: false,
            head: false,
            // Texts in Chinese, Japanese, Thai...: a word is not a space-separated run, so
            // each of their characters is a token (word bigrams become character bigrams).
            cjk: self.cjk,
        };
        let chars = NgramSpec {
            words: false,
            n_max: 5,
            head: true,
            cjk: false,
            ..words.clone()
        };
        let fields = self.base.fields.len();
        let ranked_words: Vec<Vocab> = (0..fields).map(|f| self.ranked(&words, f)).collect();
        let ranked_chars: Vec<Vocab> = (0..fields).map(|f| self.ranked(&chars, f)).collect();
        let mut out = Vec::new();
        let word_set = self.features(vec![words.clone()], &[&ranked_words]);
        let present: Vec<usize> = (0..self.k)
            .map(|c| self.y.iter().filter(|&&y| y == c).count())
            .filter(|&n| n > 0)
            .collect();
        let imbalanced = present.iter().max().copied().unwrap_or(0)
            >= IMBALANCE * present.iter().min().copied().unwrap_or(0);
        out.push(self.dual(&word_set, Loss::SquaredHinge, false));
        if imbalanced {
            out.push(self.dual(&word_set, Loss::SquaredHinge, true));
        }
        out.push(self.dual(&word_set, Loss::Logistic, false));
        // Naive Bayes reads no scaled number (its inputs must be non-negative).
        let bayes_set = self.without_scaled(&word_set);
        if bayes_set.config.groups().is_empty() {
            notes.push("ml/naive_bayes not tried: no input it can read".to_string());
        } else {
            // Its int8 weights (one per feature and class) take what the budget planned
            // for the linear models' int8 weights.
            out.push(self.bayes(&bayes_set));
        }
        // Without a text field, the character n-gram set would be the same set again.
        if fields > 0 {
            let both = self.features(vec![words, chars], &[&ranked_words, &ranked_chars]);
            out.push(self.dual(&both, Loss::SquaredHinge, false));
        }
        for m in &out {
            self.announce(&m.cand);
        }
        out
    }

    /// The vocabulary of `ng` over field `field` of every example, ranked by document
    /// frequency, as large as the program budget allows for it alone.
    fn ranked(&self, ng: &NgramSpec, field: usize) -> Vocab {
        let n = self.y.len();
        self.progress
            .stage(&format!("tf-idf vocabulary [{}]", ng.short()), n as u64);
        let chunk = 512;
        let parts = par_map(n.div_ceil(chunk), self.threads, |c| {
            let rows = c * chunk..((c + 1) * chunk).min(n);
            let len = rows.len() as u64;
            let df = DocFreq::count(ng, rows.map(|r| self.views[r][field].as_str()));
            self.progress.advance(len);
            df
        });
        let mut df = DocFreq::default();
        for p in parts {
            df.merge(p);
        }
        // A first guess of the term length (the real one plans the sets).
        let guess = if ng.words { 12.0 } else { 4.0 };
        let alone = (self.budget() / self.term_cost(guess)) as usize;
        let max = alone
            .min(self.limits.max_vocabulary)
            .min(self.max_weights / self.width());
        let vocab = Vocab::build(ng, &df, max, self.views.iter().map(|v| v[field].as_str()));
        self.progress.finish_stage();
        vocab
    }

    /// Bytes of JSON the vocabularies and weights of one model are planned within: the
    /// budget, or half the runtime's program size limit when that is smaller.
    fn budget(&self) -> f64 {
        PROGRAM_BUDGET.min(self.limits.max_program_bytes / 2) as f64
    }

    /// JSON bytes one vocabulary term costs with its IDF factor and its int8 weights.
    fn term_cost(&self, text_len: f64) -> f64 {
        text_len + 4.0 + 16.0 / 3.0 + 4.0 / 3.0 * self.width() as f64
    }

    /// A feature set over `ngrams` whose vocabularies are prefixes of `ranked` (one list
    /// per n-gram, one vocabulary per field), planned within the budget, vectorized.
    fn features(&self, ngrams: Vec<NgramSpec>, ranked: &[&Vec<Vocab>]) -> Features {
        // Groups in the program's order: field by field, n-gram by n-gram.
        let mut groups: Vec<&Vocab> = Vec::new();
        for f in 0..self.base.fields.len() {
            for r in ranked {
                groups.push(&r[f]);
            }
        }
        // Water-filling: the groups that need least take what they need, the others share
        // the rest equally.
        let cost: Vec<f64> = groups
            .iter()
            .map(|v| self.term_cost(v.text_bytes() as f64 / v.len() as f64))
            .collect();
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by(|&a, &b| {
            (groups[a].len() as f64 * cost[a]).total_cmp(&(groups[b].len() as f64 * cost[b]))
        });
        let mut left = self.budget();
        let mut weights_left = (self.max_weights / self.width()) as f64;
        let mut sizes = vec![0usize; groups.len()];
        for (done, &g) in order.iter().enumerate() {
            let share = left / (order.len() - done) as f64;
            let wshare = weights_left / (order.len() - done) as f64;
            let m = groups[g]
                .len()
                .min((share / cost[g]) as usize)
                .min(wshare as usize)
                .max(1);
            sizes[g] = m;
            left -= m as f64 * cost[g];
            weights_left -= m as f64;
        }
        let mut config = self.base.clone();
        config.ngrams = ngrams;
        config.vocabs = groups
            .iter()
            .zip(&sizes)
            .map(|(v, &m)| Arc::new(v.prefix(m)))
            .collect();
        let mut parts: Vec<String> = if config.fields.is_empty() {
            Vec::new()
        } else {
            config.ngrams.iter().map(NgramSpec::short).collect()
        };
        match config.structured.fields.len() {
            0 => {}
            1 => parts.push("1 field".into()),
            k => parts.push(format!("{k} fields")),
        }
        let desc = parts.join(",");
        let n = self.y.len();
        self.progress.stage(
            &format!("vectorize [{desc}] ({} terms)", config.dim()),
            n as u64,
        );
        let text_dim = config.text_dim();
        let xs = par_map(n, self.threads, |i| {
            let mut v = Vec::new();
            config.vectorize(&self.views[i], &mut v);
            config.structured.vectorize(&self.rows[i], text_dim, &mut v);
            self.progress.advance(1);
            v
        });
        self.progress.finish_stage();
        Self::with_vectors(config, xs, desc)
    }

    fn with_vectors(config: FeatureConfig, xs: Vec<SparseVec>, desc: String) -> Features {
        let mut csr = Csr::new(config.dim());
        for x in &xs {
            csr.push(x);
        }
        Features {
            config,
            xs: Arc::new(xs),
            csr: Arc::new(csr),
            desc,
        }
    }

    /// `f` without its scaled numbers (the same features when it has none).
    fn without_scaled(&self, f: &Features) -> Features {
        let mut config = f.config.clone();
        config.structured.scaled = false;
        if config == f.config {
            return Features {
                config,
                xs: f.xs.clone(),
                csr: f.csr.clone(),
                desc: f.desc.clone(),
            };
        }
        let text_dim = config.text_dim();
        let xs =
            f.xs.iter()
                .zip(&self.rows)
                .map(|(x, row)| {
                    let mut v: SparseVec = x.iter().copied().filter(|e| e.0 < text_dim).collect();
                    config.structured.vectorize(row, text_dim, &mut v);
                    v
                })
                .collect();
        Self::with_vectors(config, xs, f.desc.clone())
    }

    /// The binary problem "class `cls` or not" over `rows`, rows costed by `class_weight`.
    fn binary<'a>(
        &self,
        csr: &'a Csr,
        rows: &'a [usize],
        cls: usize,
        class_weight: &[f64],
    ) -> Binary<'a> {
        Binary {
            x: csr,
            rows,
            sign: rows
                .iter()
                .map(|&r| if self.y[r] == cls { 1.0 } else { -1.0 })
                .collect(),
            weight: rows.iter().map(|&r| class_weight[self.y[r]]).collect(),
        }
    }

    /// An SVM or logistic regression: `C` chosen on the out-of-fold metric, then trained
    /// on every example along the path up to it.
    fn dual(&self, f: &Features, loss: Loss, balanced: bool) -> MlCand {
        let n = self.y.len();
        let (k, width, dim) = (self.k, self.width(), f.csr.dim);
        let binary = width == 1;
        let grid: &[f64] = match loss {
            Loss::SquaredHinge => &SVM_C,
            Loss::Logistic => &LOGREG_C,
        };
        let class_weight: Vec<f64> = (0..k)
            .map(|c| {
                let nc = self.y.iter().filter(|&&y| y == c).count();
                if balanced && nc > 0 {
                    n as f64 / (k as f64 * nc as f64)
                } else {
                    1.0
                }
            })
            .collect();
        let kind = format!(
            "ml/{}{}[{}]",
            loss.short(),
            if balanced { "-balanced" } else { "" },
            f.desc
        );
        self.progress
            .stage(&kind, (self.n_folds * width + width) as u64);
        let class_of = |c: usize| if binary { 1 } else { c };
        let jobs = self.n_folds * width;
        let parts = par_map(jobs, self.threads, |j| {
            let (fold, c) = (j / width, j % width);
            self.progress.step(&format!(
                "{kind} fold {}/{} class {:?}, C {}..{}",
                fold + 1,
                self.n_folds,
                self.labels[class_of(c)],
                grid[0],
                grid[grid.len() - 1]
            ));
            let train = self.train_rows(fold);
            let test = self.test_rows(fold);
            let problem = self.binary(&f.csr, &train, class_of(c), &class_weight);
            let mut dual = Dual::new(&problem, loss, self.seed.wrapping_add(j as u64));
            let mut margins = Vec::with_capacity(grid.len());
            for &cost in grid {
                dual.solve(&problem, cost);
                let (w, bias) = quantized_column(&dual.w, dim);
                margins.push(
                    test.iter()
                        .map(|&r| f.csr.dot32(r, &w, bias))
                        .collect::<Vec<f64>>(),
                );
            }
            self.progress.advance(1);
            (c, test, margins)
        });
        let mut logits = vec![vec![vec![0.0; width]; n]; grid.len()];
        for (c, test, margins) in parts {
            for (g, m) in margins.iter().enumerate() {
                for (t, &r) in test.iter().enumerate() {
                    logits[g][r][c] = m[t];
                }
            }
        }
        let g = self.pick_grid(&logits, binary);
        let (oof, shift, t) = self.calibrate(&logits[g], binary);
        // The final model, class by class in parallel, along the path up to the chosen C.
        let all = self.all_rows();
        let columns = par_map(width, self.threads, |c| {
            self.progress.step(&format!(
                "{kind} final fit, class {:?}, C={}",
                self.labels[class_of(c)],
                grid[g]
            ));
            let problem = self.binary(&f.csr, &all, class_of(c), &class_weight);
            let seed = self.seed.wrapping_add((jobs + c) as u64);
            let mut dual = Dual::new(&problem, loss, seed);
            for &cost in &grid[..=g] {
                dual.solve(&problem, cost);
            }
            self.progress.advance(1);
            let (q, scale) = solver::quantize(&dual.w[..dim]);
            (q, scale, dual.w[dim])
        });
        let mut q = vec![0i8; dim * width];
        let mut weights = vec![0f32; dim * width];
        let mut scales = Vec::with_capacity(width);
        let mut bias = Vec::with_capacity(width);
        for (c, (col, scale, b)) in columns.into_iter().enumerate() {
            for (i, &v) in col.iter().enumerate() {
                q[i * width + c] = v;
                weights[i * width + c] = solver::dequantize(v, scale);
            }
            scales.push(scale);
            bias.push(b);
        }
        bias[0] += shift;
        self.progress.finish_stage();
        let model = LinearModel {
            width,
            weights,
            bias,
            temperature: t,
            bayes: false,
            quantized: Some((q, scales)),
        };
        self.finish_ml(f, model, oof, format!("{kind} C={}", grid[g]))
    }

    /// The grid point whose out-of-fold predictions score best on the spec's metric (the
    /// first, i.e. the most regularised, on a tie).
    fn pick_grid(&self, logits: &[Vec<Vec<f64>>], sigmoid: bool) -> usize {
        let mut best = (0usize, f64::NEG_INFINITY);
        for (g, l) in logits.iter().enumerate() {
            let pred = self.predictions(l, 0.0, 1.0, sigmoid);
            let score = metric_value(self.metric, &self.y, &pred, self.k);
            if score > best.1 {
                best = (g, score);
            }
        }
        best.0
    }

    /// Predictions from logits shifted by `shift` (sigmoid only) at temperature `t`.
    fn predictions(
        &self,
        logits: &[Vec<f64>],
        shift: f64,
        t: f64,
        sigmoid: bool,
    ) -> Vec<Option<usize>> {
        let mut p = vec![0.0; self.k];
        logits
            .iter()
            .map(|z| {
                if sigmoid {
                    let z = [z[0] + shift];
                    linear::probs(&z, 1.0 / t, true, &mut p);
                } else {
                    linear::probs(z, 1.0 / t, false, &mut p);
                }
                Some(linear::argmax(&p).0)
            })
            .collect()
    }

    /// Out-of-fold predictions, the decision-threshold shift (two labels: where the
    /// out-of-fold accuracy is highest — a regularised model under-fits the prior of a rare
    /// class) and the temperature that calibrates the confidences.
    fn calibrate(&self, logits: &[Vec<f64>], sigmoid: bool) -> (Vec<Option<usize>>, f64, f64) {
        let shift = if sigmoid {
            linear::best_shift(logits, &self.y)
        } else {
            0.0
        };
        let mut shifted = logits.to_vec();
        if sigmoid {
            shifted.iter_mut().for_each(|z| z[0] += shift);
        }
        let t = linear::fit_temperature(&shifted, &self.y, sigmoid, self.k);
        (self.predictions(&shifted, 0.0, t, sigmoid), shift, t)
    }

    /// Multinomial naive Bayes: the smoothing chosen on the out-of-fold metric.
    fn bayes(&self, f: &Features) -> MlCand {
        let (dim, k, n) = (f.csr.dim, self.k, self.y.len());
        let kind = format!("ml/naive_bayes[{}]", f.desc);
        self.progress
            .stage(&kind, (ALPHA_GRID.len() * self.n_folds + 1) as u64);
        let jobs = ALPHA_GRID.len() * self.n_folds;
        let parts = par_map(jobs, self.threads, |j| {
            let (g, fold) = (j / self.n_folds, j % self.n_folds);
            self.progress.step(&format!(
                "{kind} fold {}/{}, alpha={}",
                fold + 1,
                self.n_folds,
                ALPHA_GRID[g]
            ));
            let mut m = linear::train_bayes(
                &f.xs,
                &self.y,
                &self.train_rows(fold),
                dim,
                k,
                ALPHA_GRID[g],
            );
            // Scored as the program will store it.
            linear::quantize_bayes(&mut m);
            self.progress.advance(1);
            let mut out = Vec::new();
            for r in self.test_rows(fold) {
                let mut z = Vec::new();
                m.logits(&f.xs[r], &mut z);
                out.push((r, z));
            }
            (g, out)
        });
        let mut logits = vec![vec![Vec::new(); n]; ALPHA_GRID.len()];
        for (g, part) in parts {
            for (r, z) in part {
                logits[g][r] = z;
            }
        }
        let g = self.pick_grid(&logits, false);
        let (oof, _, t) = self.calibrate(&logits[g], false);
        let mut model =
            linear::train_bayes(&f.xs, &self.y, &self.all_rows(), dim, k, ALPHA_GRID[g]);
        linear::quantize_bayes(&mut model);
        model.temperature = t;
        self.progress.advance(1);
        self.progress.finish_stage();
        self.finish_ml(f, model, oof, format!("{kind} alpha={}", ALPHA_GRID[g]))
    }

    fn finish_ml(
        &self,
        f: &Features,
        model: LinearModel,
        oof: Vec<Option<usize>>,
        name: String,
    ) -> MlCand {
        let mut z = Vec::new();
        let train_pred =
            f.xs.iter()
                .map(|x| Some(model.predict(x, self.k, &mut z)))
                .collect();
        let decide = self.model_json(&f.config, &model);
        let program = self.program(&f.config, Vec::new(), decide, Strategy::Ml);
        MlCand {
            cand: Cand {
                strategy: Strategy::Ml,
                name,
                oof,
                program,
                train_pred,
                weights: model.weights.len(),
                over_base: None,
            },
            config: f.config.clone(),
            model,
            xs: f.xs.clone(),
        }
    }

    /// The model's `decide` JSON.
    pub(super) fn model_json(&self, config: &FeatureConfig, m: &LinearModel) -> Value {
        let inputs: Vec<String> = config.groups().into_iter().map(|g| g.feature).collect();
        // Quantized naive Bayes is stored as the softmax model it is (the format's int8
        // weights are those of `linear`).
        if m.bayes && m.quantized.is_none() {
            return json!({"op": "naive_bayes", "inputs": inputs, "classes": self.labels,
                   "class_log_prior": m.bias, "feature_log_prob": linear::pack_f32(&m.weights),
                   "temperature": m.temperature});
        }
        let weights = match &m.quantized {
            Some((q, scale)) => json!({"int8": linear::pack_i8(q), "scale": scale}),
            None => Value::String(linear::pack_f32(&m.weights)),
        };
        json!({"op": "linear", "inputs": inputs, "classes": self.labels,
               "link": if m.width == 1 { "sigmoid" } else { "softmax" },
               "weights": weights, "bias": m.bias, "temperature": m.temperature})
    }
}

/// The weights of one solved column as a program loads them (int8-quantized) and its bias.
fn quantized_column(w: &[f64], dim: usize) -> (Vec<f32>, f64) {
    let (q, scale) = solver::quantize(&w[..dim]);
    (
        q.iter().map(|&v| solver::dequantize(v, scale)).collect(),
        w[dim],
    )
}
