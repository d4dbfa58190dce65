// MathJax 3, vendored from npm (javascripts/vendor/mathjax): formulas render offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  // Typeset from document$ below only: a second, overlapping typeset from MathJax's own
  // startup would have its glyph styles cleared by clearCache() and show blank formulas.
  startup: { typeset: false },
};

document$.subscribe(() => {
  MathJax.startup.promise.then(() => {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
