// Progressive enhancement only: every page reads (and the playground steers) without this file.
"use strict";
document.documentElement.classList.add("js");

function tooltip() {
  const tip = document.getElementById("tip");
  if (!tip) return;
  document.addEventListener("mouseover", (e) => {
    const t = e.target.closest(".tok");
    if (!t) { tip.hidden = true; return; }
    tip.textContent = "activation " + t.dataset.act;
    const r = t.getBoundingClientRect();
    tip.style.left = r.left + "px";
    tip.style.top = (r.bottom + 4) + "px";
    tip.hidden = false;
  });
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function family() {
  const box = document.getElementById("family");
  const button = document.getElementById("family-button");
  if (!box || !button) return;
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "computing…";
    const r = await fetch(box.dataset.src);
    const data = await r.json();
    button.remove();
    if (!r.ok) { box.append(el("p", {class: "note"}, data.error)); return; }
    const render = (node) => {
      const ul = el("ul", {class: "tree"});
      for (const c of node.children) {
        const li = el("li");
        li.append(el("a", {href: box.dataset.prefix + "/" + c.sae + "/feature/" + c.feature}, c.sae + " #" + c.feature));
        li.append(el("span", {class: "note"}, " cos " + c.cosine.toFixed(2) + ", P(fires | parent) " + c.coactivation.toFixed(2)));
        if (c.children.length) li.append(render(c));
        ul.append(li);
      }
      return ul;
    };
    box.append(data.children.length ? render(data) : el("p", {class: "note"}, "no close relative in the larger dictionaries"));
  });
}

function viridis(t) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.max(0, Math.min(0.9999, t)) * (stops.length - 1), i = Math.floor(x), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return "rgb(" + c.join(",") + ")";
}

async function featureMap() {
  const canvas = document.getElementById("map");
  if (!canvas) return;
  const status = document.getElementById("map-status");
  const r = await fetch(canvas.dataset.src);
  const d = await r.json();
  if (!r.ok) { status.textContent = d.error; return; }
  status.textContent = d.x.length + " features";
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const xs = d.x, ys = d.y, n = xs.length;
  const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
  let scale = Math.min(W / (maxX - minX || 1), H / (maxY - minY || 1)) * 0.95;
  let ox = W / 2 - scale * (minX + maxX) / 2, oy = H / 2 - scale * (minY + maxY) / 2;
  const logf = d.freq.map((f) => (f > 0 ? Math.log10(f) : null));
  const live = logf.filter((v) => v !== null), lo = Math.min(...live), hi = Math.max(...live);
  const names = [...new Set(Object.values(d.labels))].sort();
  const palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000", "#000075"];
  const select = document.getElementById("map-colour");
  const colour = (i) => {
    if (select.value === "label") {
      const lab = d.labels[i];
      return lab === undefined ? "#d8d8d8" : palette[names.indexOf(lab) % palette.length];
    }
    return logf[i] === null ? "#cccccc" : viridis((logf[i] - lo) / (hi - lo || 1));
  };
  const legend = document.getElementById("map-legend");
  const draw = () => {
    ctx.clearRect(0, 0, W, H);
    const big = select.value === "label";
    for (let i = 0; i < n; i++) {
      const labelled = d.labels[i] !== undefined;
      const s = big && labelled ? 5 : 2;
      ctx.fillStyle = colour(i);
      ctx.fillRect(ox + scale * xs[i] - s / 2, oy + scale * ys[i] - s / 2, s, s);
    }
    legend.textContent = "";
    if (big) for (const [k, name] of names.entries()) {
      const item = el("span", {class: "label"}, name);
      item.style.borderLeft = "12px solid " + palette[k % palette.length];
      legend.append(item, " ");
    }
  };
  select.addEventListener("change", draw);
  draw();
  canvas.dataset.ready = "1";
  const at = (e) => {
    const b = canvas.getBoundingClientRect();
    const px = (e.clientX - b.left) * W / b.width, py = (e.clientY - b.top) * H / b.height;
    let best = -1, bd = 36;
    for (let i = 0; i < n; i++) {
      const dx = ox + scale * xs[i] - px, dy = oy + scale * ys[i] - py, dd = dx * dx + dy * dy;
      if (dd < bd) { bd = dd; best = i; }
    }
    return {best, px, py};
  };
  const tip = document.getElementById("tip");
  let drag = null, moved = false;
  canvas.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; moved = false; });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("mousemove", (e) => {
    if (drag) {
      const b = canvas.getBoundingClientRect();
      ox += (e.clientX - drag[0]) * W / b.width; oy += (e.clientY - drag[1]) * H / b.height;
      drag = [e.clientX, e.clientY]; moved = true; draw(); return;
    }
    const {best} = at(e);
    if (best < 0) { tip.hidden = true; return; }
    const expl = d.explanations[best] || "(no explanation)";
    tip.textContent = "#" + best + (d.labels[best] ? " [" + d.labels[best] + "]" : "") + ": " + expl;
    tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px"; tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (e) => {
    if (moved) return;
    const {best} = at(e);
    if (best >= 0) window.location.href = canvas.dataset.href + best;
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const {px, py} = at(e), k = e.deltaY < 0 ? 1.25 : 0.8;
    ox = px - k * (px - ox); oy = py - k * (py - oy); scale *= k; draw();
  }, {passive: false});
}

function completionNote(c) {
  let s = c.n_tokens + " tokens";
  if (c.logprob_per_token !== null) s += " · log-prob/token " + c.logprob_per_token.toFixed(2);
  for (const w of c.watched) {
    s += " · #" + w.feature + " fires on " + Math.round(100 * (w.fire_fraction || 0)) + "% of them, up to " +
      (w.max_relative || 0).toFixed(2) + "× its max";
  }
  return s;
}

// The playground: the form's request streamed (server-sent events read from fetch, so that an
// error answer's message can be shown), each token appended to its column as it comes.
function steering() {
  const form = document.getElementById("steer-form");
  if (!form) return;
  const body = document.querySelector("#steer-features tbody");
  document.getElementById("add-feature").addEventListener("click", () => {
    const row = body.querySelector("tr.blank").cloneNode(true);
    row.querySelector("input[name=feature]").value = "";
    body.append(row);
    row.querySelector("input").focus();
  });
  const status = document.getElementById("steer-status");
  const out = {base: document.getElementById("out-base"), steered: document.getElementById("out-steered")};
  const note = {base: document.getElementById("score-base"), steered: document.getElementById("score-steered")};
  const prompts = document.querySelectorAll("#steer-out b.prompt");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const params = new URLSearchParams();
    const scales = data.getAll("scale");
    data.getAll("feature").forEach((f, i) => {
      if (String(f).trim() === "") return;
      params.append("feature", f);
      params.append("scale", String(scales[i] || "").trim() || "10");
    });
    if (!params.has("feature")) { status.textContent = "give a feature id to steer"; return; }
    for (const k of ["prompt", "mode", "max_new_tokens"]) params.set(k, data.get(k));
    const sae = data.get("sae");
    history.replaceState(null, "", "?" + params.toString() + "&sae=" + encodeURIComponent(sae));
    for (const k in out) { out[k].textContent = ""; note[k].textContent = ""; }
    for (const b of prompts) b.textContent = data.get("prompt");
    status.textContent = "sending…";
    form.dataset.state = "running";
    const r = await fetch(form.dataset.api + encodeURIComponent(sae) + "/steer/stream?" + params.toString(),
                          {headers: {Accept: "text/event-stream"}});
    if (!r.ok) {
      const d = await r.json().catch(() => ({error: "error " + r.status}));
      status.textContent = d.error;
      form.dataset.state = "error";
      return;
    }
    const handle = (event, d) => {
      if (event === "queued") status.textContent = d.message;
      else if (event === "start") status.textContent = "generating…";
      else if (event === "token") out[d.which].textContent += d.text;
      else if (event === "done") {
        for (const k in out) { out[k].textContent = d[k].text; note[k].textContent = completionNote(d[k]); }
        status.textContent = "done";
        form.dataset.state = "done";
      } else if (event === "error") {
        status.textContent = d.error;
        form.dataset.state = "error";
      }
    };
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message", payload = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) payload += line.slice(6);
        }
        handle(event, JSON.parse(payload));
      }
    }
  });
}

// "Analyse a text": a click on a token shows its features (without JavaScript, :target does).
function analysedTokens() {
  const box = document.querySelector(".analysed");
  if (!box) return;
  box.addEventListener("click", (e) => {
    const t = e.target.closest(".atok");
    if (!t) return;
    e.preventDefault();
    for (const x of document.querySelectorAll(".atok.selected")) x.classList.remove("selected");
    for (const x of document.querySelectorAll(".tokfeats.shown")) x.classList.remove("shown");
    t.classList.add("selected");
    document.getElementById("tok-" + t.dataset.pos).classList.add("shown");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tooltip();
  family();
  featureMap();
  steering();
  analysedTokens();
});
