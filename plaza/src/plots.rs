//! The console's pictures, drawn on the server as SVG so the browser needs no script library:
//! a job's training curve and the nodes' measured speeds (plotters), and a trained model's
//! lineage — dataset and model into the job, the job into the trained model, with the payments
//! on the arrows.

use plotters::prelude::*;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 260;

/// The training loss per round; `None` when there is nothing to draw yet.
pub fn loss_curve(points: &[(u32, f64)]) -> Option<String> {
    round_curve(points, "training loss")
}

/// One value per round (`measure` names it on the axis), as a line with a mark at each point:
/// held-out evaluations may come every few rounds. `None` when there is nothing to draw yet.
pub fn round_curve(points: &[(u32, f64)], measure: &str) -> Option<String> {
    let finite: Vec<(u32, f64)> = points.iter().copied().filter(|(_, l)| l.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let last_round = finite.iter().map(|(r, _)| *r).max().unwrap_or(1).max(1);
    let top = finite.iter().map(|(_, l)| *l).fold(f64::MIN, f64::max);
    let bottom = finite.iter().map(|(_, l)| *l).fold(f64::MAX, f64::min);
    let margin = ((top - bottom) * 0.1).max(1e-6);
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        area.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0u32..last_round, (bottom - margin).max(0.0)..top + margin)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc(measure)
            .light_line_style(WHITE)
            .draw()
            .ok()?;
        chart
            .draw_series(LineSeries::new(finite.iter().copied(), BLUE.stroke_width(2)))
            .ok()?;
        chart
            .draw_series(finite.iter().map(|point| Circle::new(*point, 3, BLUE.filled())))
            .ok()?;
        area.present().ok()?;
    }
    Some(svg)
}

/// Each compute node's measured GFLOP/s, one bar each.
pub fn node_speeds(nodes: &[(String, f64)]) -> Option<String> {
    if nodes.is_empty() {
        return None;
    }
    let fastest = nodes.iter().map(|(_, g)| *g).fold(0.0, f64::max).max(0.001);
    let mut svg = String::new();
    {
        let height = 40 + 28 * nodes.len() as u32;
        let area = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        area.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(110)
            .build_cartesian_2d(0.0..fastest * 1.1, (0..nodes.len()).into_segmented())
            .ok()?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("GFLOP/s (measured)")
            .y_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(i) => nodes.get(*i).map(|(n, _)| n.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .ok()?;
        chart
            .draw_series(nodes.iter().enumerate().map(|(i, (_, gflops))| {
                Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*gflops, SegmentValue::Exact(i + 1)),
                    ],
                    BLUE.mix(0.6).filled(),
                )
            }))
            .ok()?;
        area.present().ok()?;
    }
    Some(svg)
}

/// One box of the lineage graph.
pub struct LineageNode {
    pub label: String,
    pub name: String,
    pub href: String,
}

/// What the lineage graph shows: the sources, the job, its product, and what was paid.
pub struct LineageGraph {
    pub dataset: LineageNode,
    pub model: LineageNode,
    pub job: LineageNode,
    pub trained: Option<LineageNode>,
    pub dataset_fee: String,
    pub model_fee: String,
    pub compute_paid: String,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn node_box(svg: &mut String, x: u32, y: u32, node: &LineageNode) {
    let name: String = node.name.chars().take(26).collect();
    svg.push_str(&format!(
        r##"<a href="{href}"><rect x="{x}" y="{y}" width="180" height="54" rx="8" fill="#eef3fb" stroke="#2b5fab"/><text x="{tx}" y="{ly}" font-size="11" fill="#555" text-anchor="middle">{label}</text><text x="{tx}" y="{ny}" font-size="13" fill="#111" text-anchor="middle">{name}</text></a>"##,
        href = escape(&node.href),
        tx = x + 90,
        ly = y + 20,
        ny = y + 40,
        label = escape(&node.label),
        name = escape(&name),
    ));
}

fn arrow(svg: &mut String, from: (u32, u32), to: (u32, u32), caption: &str) {
    svg.push_str(&format!(
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#444" stroke-width="1.5" marker-end="url(#head)"/><text x="{}" y="{}" font-size="11" fill="#226622" text-anchor="middle">{}</text>"##,
        from.0,
        from.1,
        to.0,
        to.1,
        (from.0 + to.0) / 2,
        (from.1 + to.1) / 2 - 6,
        escape(caption)
    ));
}

/// Dataset → Job → TrainedModel ← Model, as the ledger records them.
pub fn lineage(graph: &LineageGraph) -> String {
    let mut svg = String::from(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="820" height="200" viewBox="0 0 820 200" role="img" aria-label="lineage"><defs><marker id="head" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#444"/></marker></defs>"##,
    );
    node_box(&mut svg, 10, 20, &graph.dataset);
    node_box(&mut svg, 10, 126, &graph.model);
    node_box(&mut svg, 320, 73, &graph.job);
    arrow(
        &mut svg,
        (190, 47),
        (318, 92),
        &format!("fee {} AIC", graph.dataset_fee),
    );
    arrow(
        &mut svg,
        (190, 153),
        (318, 114),
        &format!("fee {} AIC", graph.model_fee),
    );
    if let Some(trained) = &graph.trained {
        node_box(&mut svg, 630, 73, trained);
        arrow(
            &mut svg,
            (500, 100),
            (628, 100),
            &format!("compute {} AIC", graph.compute_paid),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_is_an_svg_with_its_line_and_nothing_is_drawn_from_nothing() {
        let svg = loss_curve(&[(1, 2.3), (2, 1.1), (3, 0.4), (4, f64::NAN)]).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(svg.contains("training loss"));
        assert!(loss_curve(&[]).is_none());
        let accuracy = round_curve(&[(2, 0.5), (4, 0.75), (6, 0.9)], "held-out accuracy").unwrap();
        assert!(accuracy.contains("held-out accuracy"));
        assert_eq!(
            accuracy.matches("<circle").count(),
            3,
            "a mark at each evaluation"
        );
        assert!(loss_curve(&[(1, f64::NAN)]).is_none());
        let bars = node_speeds(&[("compute-1".into(), 2.5), ("compute-2".into(), 1.0)]).unwrap();
        assert!(bars.contains("compute-1") && bars.contains("<rect"), "{bars}");
    }

    #[test]
    fn a_lineage_graph_escapes_the_names_users_chose() {
        let node = |label: &str, name: &str| LineageNode {
            label: label.into(),
            name: name.into(),
            href: "/assets/1".into(),
        };
        let svg = lineage(&LineageGraph {
            dataset: node("Dataset", "<script>digits"),
            model: node("Model", "cnn"),
            job: node("Job", "abc"),
            trained: Some(node("TrainedModel", "out")),
            dataset_fee: "1".into(),
            model_fee: "2".into(),
            compute_paid: "3.5".into(),
        });
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;digits"));
        assert!(svg.contains("compute 3.5 AIC"));
        assert_eq!(svg.matches("<rect").count(), 4);
    }
}
