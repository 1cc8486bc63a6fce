"""data2vec: config.py (settings), targets.py (schedule, targets, loss), teacher.py (EMA teacher), model.py
(student + head), objective.py (the two registered objectives, data2vec_text and data2vec_audio)."""
