// The rater's page: save every answer at once (in order), keyboard shortcuts, progress.
"use strict";
(() => {
  const root = document.getElementById("rating");
  if (!root) return;
  const api = root.dataset.api;
  const csrf = root.dataset.csrf;
  const scales = Array.from(document.querySelectorAll("fieldset.scale"));
  const status = document.getElementById("status");
  // Tests and the page read this: how many saves are in flight, done, or refused.
  const state = (window.ratingState = { pending: 0, saved: 0, failed: 0 });
  let active = 0;
  let chain = Promise.resolve(); // one save at a time, so answers land in the order given
  let statusTimer = null;

  function show(text, isError) {
    status.textContent = text;
    status.className = isError ? "show error" : "show";
    clearTimeout(statusTimer);
    if (!isError) statusTimer = setTimeout(() => (status.className = ""), 1200);
  }

  function setActive(index, scroll) {
    if (!scales.length) return;
    active = Math.max(0, Math.min(scales.length - 1, index));
    scales.forEach((s, i) => s.classList.toggle("active", i === active));
    if (scroll) scales[active].scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function updateProgress(data) {
    document.getElementById("progress").value = data.answered;
    document.getElementById("answered").textContent = data.answered;
    document.getElementById("group-answered").textContent = data.group_answered;
  }

  function revert(fieldset) {
    const saved = fieldset.dataset.saved;
    fieldset.querySelectorAll("input").forEach((input) => {
      input.checked = input.value === saved;
    });
  }

  function save(fieldset, value) {
    state.pending += 1;
    const body = JSON.stringify({
      image: fieldset.dataset.image,
      criterion: fieldset.dataset.criterion,
      value: Number(value),
    });
    chain = chain.then(async () => {
      try {
        const response = await fetch(api, {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body,
          credentials: "same-origin",
          cache: "no-store",
        });
        const data = await response.json().catch(() => ({ error: response.statusText }));
        if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
        fieldset.dataset.saved = String(data.saved.value);
        fieldset.classList.remove("failed");
        updateProgress(data);
        state.saved += 1;
        show("Saved");
      } catch (error) {
        state.failed += 1;
        fieldset.classList.add("failed");
        revert(fieldset);
        show(`Not saved: ${error.message}`, true);
      } finally {
        state.pending -= 1;
      }
    });
    return chain;
  }

  function rate(index, value) {
    const fieldset = scales[index];
    const input = fieldset.querySelector(`input[value="${value}"]`);
    input.checked = true;
    save(fieldset, value);
  }

  async function go(url) {
    if (!url) return;
    await chain; // never leave with an answer unsaved
    window.location.href = url;
  }

  document.addEventListener("change", (event) => {
    const input = event.target;
    if (!input.matches("fieldset.scale input[type=radio]")) return;
    const fieldset = input.closest("fieldset");
    setActive(scales.indexOf(fieldset), false);
    save(fieldset, input.value);
  });

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key;
    if (/^[1-5]$/.test(key)) {
      rate(active, key);
      setActive(active + 1, true);
    } else if (key === "ArrowDown" || key === "j") {
      setActive(active + 1, true);
    } else if (key === "ArrowUp" || key === "k") {
      setActive(active - 1, true);
    } else if (key === "ArrowRight" || key === "n") {
      go(root.dataset.next);
    } else if (key === "ArrowLeft" || key === "p") {
      go(root.dataset.prev);
    } else if (key === "o" || key === "O") {
      const toggle = document.getElementById("outline-toggle");
      toggle.checked = !toggle.checked;
      toggle.dispatchEvent(new Event("change", { bubbles: true }));
    } else {
      return;
    }
    event.preventDefault();
  });

  document.getElementById("outline-toggle").addEventListener("change", (event) => {
    document.body.classList.toggle("outlines", event.target.checked);
    try {
      localStorage.setItem("ccis-rating-outlines", event.target.checked ? "1" : "0");
    } catch (_) {
      /* storage may be off: the toggle still works for this page */
    }
  });
  try {
    if (localStorage.getItem("ccis-rating-outlines") === "1") {
      document.getElementById("outline-toggle").checked = true;
      document.body.classList.add("outlines");
    }
  } catch (_) {
    /* no storage: outlines start hidden */
  }

  scales.forEach((fieldset, index) => {
    fieldset.addEventListener("click", () => setActive(index, false));
  });
  window.addEventListener("beforeunload", (event) => {
    if (state.pending > 0) event.preventDefault();
  });
  // Start at the first unanswered scale (a resumed page continues where it stopped).
  const first = scales.findIndex((s) => !s.dataset.saved);
  setActive(first < 0 ? 0 : first, false);
  state.ready = true;
})();
