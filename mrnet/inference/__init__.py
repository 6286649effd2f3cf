"""Using trained models on new exams: the predictor, its command line, CAMs and the viewer.
Nothing here imports training code."""
