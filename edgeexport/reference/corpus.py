"""The built-in English text the zoo's tokenizers are trained on (:mod:`edgeexport.reference.processors`).

Written for this project: plain sentences of everyday English with questions, quotes, digits and
punctuation, enough for a byte-pair vocabulary of the tiny presets' 1000 tokens. It never changes
without a reason, since every zoo tokenizer, and so every zoo artifact, is built from it.
"""

from __future__ import annotations

CORPUS = """\
Hello, and welcome. This small text teaches a tokenizer the shape of English words.
Who wrote it? A model converter that needs a vocabulary and has no network to fetch one.
I love this little town by the river. The market opens at seven in the morning, and the bakery sells bread,
cakes and hot coffee. People walk their dogs along the water while the sun comes up over the hills.
What time is it? It is half past nine, and the train to the city leaves in twenty minutes.
Where are you going today? We are going to the museum, then to the park, and home before dinner.
The cat sat on the mat. The dog slept under the table. A bird sang in the tree outside the window.
She asked a question, and he gave a clear answer: the meeting starts at three o'clock on Tuesday.
Why is the sky blue? Sunlight is scattered by the air, and blue light is scattered more than red light.
How many students passed the exam? Forty-two of the fifty students passed, which is eighty-four percent.
The weather was cold and wet all week, but on Saturday the clouds cleared and the children played outside.
He read the book in one night because he could not stop turning the pages; the ending surprised everyone.
Our team builds software for small devices. We measure every model, check its numbers, and ship it only
when the results agree with the reference within the stated bounds.
Language models predict the next word from the words before it. Translation models read a sentence in one
language and write it in another. Classifiers decide whether a review is positive or negative.
"This movie was wonderful," she said. "I didn't like it at all," he replied, "the story was too slow."
Please send the report by Friday. Thank you for your help, and have a good weekend!
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Numbers appear everywhere: 1, 2, 3, 10, 42, 100, 2024, 3.14, and 1,000,000 are all written with digits.
On the first day of spring the farmers planted wheat, corn and beans in the fields behind the old barn.
A good question deserves a good answer. Who discovered the planet? When did it happen? Which telescope was used?
The river flows from the mountains to the sea, passing through forests, villages and a large city.
Write clearly, speak kindly, and listen carefully. Learning takes time, practice and patience.
The doctor said the patient was feeling better and could go home on Monday after one more test.
Computers store text as numbers. A tokenizer splits the text into pieces and gives each piece an id.
Some pieces are whole words, others are parts of words, and rare words are built from many small pieces.
It was a bright morning in May. The garden was full of roses, tulips and tall green grass.
Can you help me find the station? Walk straight ahead, turn left at the bank, and it is on your right.
The chef cut the onions, boiled the pasta and served the soup with fresh bread and a little salt.
Music filled the hall as the orchestra played the last movement of the symphony.
They built a bridge across the valley so that the two towns could trade goods and share their news.
Every evening the old man told stories about the sea, the ships he had sailed and the storms he had seen.
Summer holidays are long and warm; winter nights are short of light but full of songs and warm drinks.
The scientist wrote down each result, compared it with the prediction and repeated the experiment twice.
If the answer is yes, press one. If the answer is no, press two. Otherwise, wait for an operator.
Reading, writing and arithmetic were the three subjects taught in the village school a century ago.
Translate English to German: the house is wonderful. Summarize: the meeting was long, but it ended well.
Question: where does the river begin? Context: the river begins in the mountains north of the city.
My favourite colours are green, yellow and purple, although my sister prefers orange and grey.
The library closes at eight o'clock tonight, so return your books before then or pay a small fine.
We visited Paris, London, Berlin, Madrid and Rome during a long journey across Europe last autumn.
Birds migrate south in winter and return north in spring, guided by the sun, the stars and the wind.
A healthy breakfast includes fruit, eggs, yogurt, oats or whole-grain toast with butter and honey.
Engineers tested the bridge with heavy trucks; it carried the load safely and moved only a few millimetres.
The election results were announced on Sunday evening, and the new mayor thanked her supporters.
Jazz, rock, classical and folk music each have their own rhythm, instruments and history.
Keep calm and carry on. Never give up. Practice makes perfect. Knowledge is power. Time flies.
Quietly, the fox crept past the sleeping hounds, across the frozen yard and into the dark woods.
"""
