// Line charts drawn as SVG: one polyline per series, dashed vertical marks
// (checkpoints). Each series' polyline carries data-points (its count), which
// tests and assistive text read; the figure's caption says the latest values.

import { h, number } from "./util.js";

const WIDTH = 640;
const HEIGHT = 240;
const PAD = { left: 56, right: 16, top: 12, bottom: 28 };

function ticks(low, high, count) {
  if (low === high) return [low];
  const step = (high - low) / (count - 1);
  return Array.from({ length: count }, (_, i) => low + i * step);
}

/**
 * series: [{ name, label, points: [[x, y], ...] }]; marks: [{ x, label }].
 * Returns a <figure> with the chart, a legend and a caption.
 */
export function lineChart({ title, series, marks = [], xLabel = "step" }) {
  const drawn = series.filter((s) => s.points.length > 0);
  const all = drawn.flatMap((s) => s.points);
  const figure = h("figure", { class: "chart", dataset: { chart: title } });
  const caption = h("figcaption", {}, h("strong", { text: title }));
  if (all.length === 0) {
    figure.append(caption, h("p", { class: "muted", text: "No points yet." }));
    return figure;
  }
  const xs = all.map((p) => p[0]).concat(marks.map((m) => m.x));
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const margin = (y1 - y0) * 0.05;
  y0 -= margin; y1 += margin;
  const sx = (x) => PAD.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
  const sy = (y) => HEIGHT - PAD.bottom - ((y - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);

  const summary = drawn.map((s) => `${s.label}: ${s.points.length} points, latest ${number(s.points.at(-1)[1])}`).join("; ");
  const svg = h("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": `${title}. ${summary}`,
    preserveAspectRatio: "none", class: "plot",
  });
  const axes = h("g", { class: "axes" });
  for (const y of ticks(y0 + margin, y1 - margin, 4)) {
    axes.append(
      h("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: sy(y), y2: sy(y), class: "grid" }),
      h("text", { x: PAD.left - 6, y: sy(y) + 4, "text-anchor": "end", text: number(y, 3) }),
    );
  }
  for (const x of ticks(x0, x1, Math.min(5, x1 - x0 + 1))) {
    axes.append(h("text", { x: sx(x), y: HEIGHT - 8, "text-anchor": "middle", text: Math.round(x) }));
  }
  axes.append(h("text", { x: PAD.left - 6, y: HEIGHT - 8, "text-anchor": "end", class: "axis-label", text: xLabel }));
  svg.append(axes);
  for (const mark of marks) {
    svg.append(h("line", {
      x1: sx(mark.x), x2: sx(mark.x), y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "mark", dataset: { step: mark.x },
    }, h("title", { text: mark.label })));
  }
  drawn.forEach((s, index) => {
    const points = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    svg.append(h("polyline", { points, class: `series series-${index}`, dataset: { series: s.name, points: s.points.length } }));
    if (s.points.length === 1) {
      const [x, y] = s.points[0];
      svg.append(h("circle", { cx: sx(x), cy: sy(y), r: 3, class: `series-dot series-${index}` }));
    }
  });
  const legend = h("ul", { class: "legend" },
    drawn.map((s, index) => h("li", {}, h("span", { class: `swatch series-${index}`, "aria-hidden": "true" }),
      `${s.label} (${number(s.points.at(-1)[1])})`)),
    marks.length ? h("li", {}, h("span", { class: "swatch mark", "aria-hidden": "true" }), "checkpoint") : null,
  );
  caption.append(" ", h("span", { class: "muted", text: `${all.length} points` }));
  figure.append(caption, svg, legend);
  return figure;
}
