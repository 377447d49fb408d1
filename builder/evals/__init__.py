"""What evaluations need beside their stages (builder/stages/winrate.py, builder/stages/ifeval.py): the summary
table of the `evals` table and NLTK's Punkt data laid out offline for IFEval's checkers."""
