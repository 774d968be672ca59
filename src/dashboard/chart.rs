//! The spend page's chart: spend per UTC day as stacked bars, one segment per provider, laid out
//! here as SVG geometry so the page needs no script and no style attribute (colours are the
//! `s0`…`s7` classes of `app.css`). Pure: rows in, coordinates out.

use crate::money::Money;
use crate::spend::store::DailySpend;

pub const DAY_SECS: i64 = 86_400;
/// The `viewBox` is `WIDTH` × `HEIGHT`; the SVG is stretched to its box (`preserveAspectRatio`
/// `none`), so these only set the precision of the integer coordinates.
pub const WIDTH: i64 = 3000;
pub const HEIGHT: i64 = 1000;
/// Colour classes in `app.css`.
const SHADES: usize = 8;

/// One provider's part of one day's bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub x: i64,
    pub y: i64,
    pub width: i64,
    pub height: i64,
    /// `s0`…`s7`: the provider's colour.
    pub shade: String,
    /// What a pointer over it (or a screen reader) is told, e.g. `2025-01-31: OpenAI $1.20`.
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegendEntry {
    pub name: &'static str,
    pub shade: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    pub segments: Vec<Segment>,
    pub legend: Vec<LegendEntry>,
    /// The highest day's total, which is the chart's full height.
    pub peak: Money,
    pub peak_day: String,
    pub first_day: String,
    pub last_day: String,
}

/// How a provider id is named and coloured.
pub trait Providers {
    fn name(&self, id: &str) -> &'static str;
    /// A stable index (the registry's order); the shade is this modulo the number of shades.
    fn index(&self, id: &str) -> usize;
}

/// `days` slots starting at the day `first_day` (Unix seconds of a UTC midnight). Rows outside
/// the range, and rows without spend, draw nothing.
pub fn layout(
    rows: &[DailySpend],
    first_day: i64,
    days: i64,
    providers: &impl Providers,
    day_label: impl Fn(i64) -> String,
) -> Chart {
    let days = days.max(1);
    let slot = WIDTH / days;
    let mut rows: Vec<(i64, usize, &DailySpend)> = rows
        .iter()
        .filter(|r| r.spend > Money::ZERO)
        .filter_map(|r| {
            let d = (r.day - first_day).div_euclid(DAY_SECS);
            (0..days)
                .contains(&d)
                .then(|| (d, providers.index(&r.provider), r))
        })
        .collect();
    // Within a day, providers stack in registry order, so each keeps its place from day to day.
    rows.sort_by_key(|(d, index, _)| (*d, *index));

    let mut totals = vec![0i128; usize::try_from(days).unwrap_or(0)];
    for (d, _, r) in &rows {
        if let Some(t) = usize::try_from(*d).ok().and_then(|d| totals.get_mut(d)) {
            *t += i128::from(r.spend.micros());
        }
    }
    let (peak_index, peak) = totals
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|(i, t)| (*t, std::cmp::Reverse(*i)))
        .unwrap_or((0, 0));
    // The top of a stack that has reached `sum`: integer, and exact at the peak.
    let top = |sum: i128| -> i64 {
        if peak <= 0 {
            return HEIGHT;
        }
        i64::try_from(i128::from(HEIGHT) - sum * i128::from(HEIGHT) / peak).unwrap_or(0)
    };

    let mut segments = Vec::with_capacity(rows.len());
    let mut legend: Vec<(usize, LegendEntry)> = Vec::new();
    let (mut day, mut below) = (-1, 0i128);
    for (d, index, r) in rows {
        if d != day {
            (day, below) = (d, 0);
        }
        let above = below + i128::from(r.spend.micros());
        let (bottom, y) = (top(below), top(above));
        let shade = format!("s{}", index % SHADES);
        let name = providers.name(&r.provider);
        segments.push(Segment {
            x: d * slot + slot / 10,
            y,
            width: slot - slot / 5,
            height: bottom - y,
            shade: shade.clone(),
            title: format!("{}: {name} ${}", day_label(r.day), r.spend),
        });
        if !legend.iter().any(|(i, _)| *i == index) {
            legend.push((index, LegendEntry { name, shade }));
        }
        below = above;
    }
    legend.sort_by_key(|(i, _)| *i);
    let peak_day = first_day + i64::try_from(peak_index).unwrap_or(0) * DAY_SECS;
    Chart {
        segments,
        legend: legend.into_iter().map(|(_, l)| l).collect(),
        peak: Money::from_micros(i64::try_from(peak).unwrap_or(i64::MAX)),
        peak_day: day_label(peak_day),
        first_day: day_label(first_day),
        last_day: day_label(first_day + (days - 1) * DAY_SECS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;

    impl Providers for Two {
        fn name(&self, id: &str) -> &'static str {
            if id == "openai" {
                "OpenAI"
            } else {
                "Anthropic"
            }
        }
        fn index(&self, id: &str) -> usize {
            usize::from(id != "openai")
        }
    }

    fn row(day: i64, provider: &str, micros: i64) -> DailySpend {
        DailySpend {
            day: day * DAY_SECS,
            provider: provider.to_owned(),
            spend: Money::from_micros(micros),
        }
    }

    fn label(day: i64) -> String {
        format!("day {}", day / DAY_SECS)
    }

    #[test]
    fn the_peak_day_fills_the_height_and_others_scale_to_it() {
        let rows = [row(0, "openai", 1_000_000), row(2, "openai", 4_000_000)];
        let c = layout(&rows, 0, 30, &Two, label);
        assert_eq!(c.segments.len(), 2);
        assert_eq!((c.segments[0].y, c.segments[0].height), (750, 250));
        assert_eq!((c.segments[1].y, c.segments[1].height), (0, HEIGHT));
        assert_eq!(c.segments[1].x, 2 * 100 + 10);
        assert_eq!(c.segments[1].width, 80);
        assert_eq!(c.peak, Money::from_micros(4_000_000));
        assert_eq!(c.peak_day, "day 2");
        assert_eq!(
            (c.first_day.as_str(), c.last_day.as_str()),
            ("day 0", "day 29")
        );
    }

    #[test]
    fn providers_stack_in_registry_order_without_gaps() {
        let rows = [row(5, "anthropic", 1_000_000), row(5, "openai", 3_000_000)];
        let c = layout(&rows, 0, 30, &Two, label);
        let (low, high) = (&c.segments[0], &c.segments[1]);
        assert_eq!(low.shade, "s0", "OpenAI first, at the bottom");
        assert_eq!(low.y + low.height, HEIGHT);
        assert_eq!(high.y + high.height, low.y, "stacked on top");
        assert_eq!(high.y, 0);
        assert_eq!(high.title, "day 5: Anthropic $1.00");
        let names: Vec<_> = c.legend.iter().map(|l| l.name).collect();
        assert_eq!(names, ["OpenAI", "Anthropic"]);
    }

    #[test]
    fn days_outside_the_range_and_zero_spend_draw_nothing() {
        let rows = [
            row(-1, "openai", 1_000_000),
            row(30, "openai", 1_000_000),
            row(3, "openai", 0),
        ];
        let c = layout(&rows, 0, 30, &Two, label);
        assert!(c.segments.is_empty() && c.legend.is_empty());
        assert_eq!(c.peak, Money::ZERO);
    }
}
