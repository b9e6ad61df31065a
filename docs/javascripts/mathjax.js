// MathJax 3 for the pages (pymdownx.arithmatex, generic mode: \( \) and \[ \]) and for the
// rendered notebooks (their markdown keeps $ and $$; nbconvert's own MathJax 2 loader is
// empty under mkdocs-jupyter). Only those two kinds of element are typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jupyter-wrapper",
  },
};

document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
