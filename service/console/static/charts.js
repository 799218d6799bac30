// Charts as SVG drawn from plain data: stacked bars over time (usage), horizontal bars (top-k).
// Colours come from console.css classes (series-N), never from inline styles.
const SVG = "http://www.w3.org/2000/svg";
const SERIES = 8;

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
function niceMax(max) {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((f) => f * power).find((v) => v >= max);
}

// Stacked bars, one per category (day), one segment per series (model).
// series: [{name, values: [per category]}]; format: value -> label.
export function stackedBars(container, { categories, series, format, label }) {
  const width = 720, height = 280, left = 72, right = 12, top = 12, bottom = 40;
  const totals = categories.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  const max = niceMax(Math.max(0, ...totals));
  const plotW = width - left - right, plotH = height - top - bottom;
  const step = plotW / Math.max(1, categories.length);
  const barW = Math.max(2, step * 0.7);
  const y = (v) => top + plotH - (v / max) * plotH;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "bars" });
  for (let t = 0; t <= 4; t++) {
    const value = (max * t) / 4;
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" }, format(value)));
  }
  const every = Math.ceil(categories.length / 12);  // at most about 12 labels under the axis
  categories.forEach((category, i) => {
    const x = left + i * step + (step - barW) / 2;
    let base = 0;
    series.forEach((s, n) => {
      const value = s.values[i];
      if (value <= 0) return;
      const bar = svg("rect", { x, y: y(base + value), width: barW, height: y(base) - y(base + value), class: `series-${n % SERIES}` });
      bar.append(svg("title", {}, `${category} · ${s.name}: ${format(value)}`));
      chart.append(bar);
      base += value;
    });
    if (i % every === 0) {
      chart.append(svg("text", { x: x + barW / 2, y: height - bottom + 16, class: "axis", "text-anchor": "middle" }, category.slice(5)));
    }
  });
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, n) => {
    const item = document.createElement("li");
    const swatch = svg("svg", { width: 12, height: 12, "aria-hidden": "true" });
    swatch.append(svg("rect", { width: 12, height: 12, class: `series-${n % SERIES}` }));
    item.append(swatch, ` ${s.name}`);
    legend.append(item);
  });
  container.replaceChildren(chart, legend);
}

// Horizontal bars for ranked answers: [{label, value}] with value in [0, 1].
export function rankedBars(container, items, label) {
  const rowH = 28, labelW = 220, width = 720, barMax = width - labelW - 80;
  const height = Math.max(rowH, items.length * rowH);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "ranked" });
  items.forEach((item, i) => {
    const y = i * rowH;
    chart.append(svg("text", { x: labelW - 8, y: y + 18, "text-anchor": "end", class: "label" }, item.label));
    const bar = svg("rect", { x: labelW, y: y + 5, height: rowH - 10, width: Math.max(1, item.value * barMax), class: `series-${i === 0 ? 0 : 1}` });
    bar.append(svg("title", {}, `${item.label}: ${item.value.toFixed(4)}`));
    chart.append(bar);
    chart.append(svg("text", { x: labelW + item.value * barMax + 6, y: y + 18, class: "value" }, item.value.toFixed(3)));
  });
  container.replaceChildren(chart);
}
